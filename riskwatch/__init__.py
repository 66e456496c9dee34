"""The dynamic risk assessment system: everything but the stage scripts' command lines.

Layers, each importing only the ones below it (enforced by import-linter, see ``pyproject.toml``; drawn in
``docs/design.md``)::

    cycle                       the monitoring job's run (fullprocess.py)
    web | report                the API and the dashboard | the PDF report
    monitoring                  the monitoring decision and its alerts
    stages                      what each stage script does
    model                       the model families, their drivers, the choice among them, evaluation, current clients
    stats                       drift tests and the comparison rule the gate shares with training
    data                        readers, the ingested rows and their batches, data statistics, database rows
    state                       records of what the stages wrote, artifacts, runs and the history store
    core                        errors, files, config, schema, logging, the command-line frame
"""
