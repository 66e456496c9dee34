"""Deployment: publish the trained model with its scores and ingestion record as one version.

Layout of the deployment folder::

    versions/v0001/  trainedmodel.pkl trainedmodel.json latestscore.txt metrics.json
                     ingestedfiles.txt ingestedfiles.json version.json
                     summaryreport.pdf confusionmatrix.png   (put there by reporting.py)
    current -> versions/v0001          (a symlink, swapped by an atomic rename)
    trainedmodel.pkl -> current/trainedmodel.pkl, and likewise for each published file and the report

A version is built in a staging folder and renamed into place whole, then ``current`` is
switched by one rename, so a reader that resolves ``current`` once sees one version's files
only, and a crash at any instant (kill -9 included) leaves the previous version serving.
The classic paths (``production_deployment/trainedmodel.pkl``) keep working through the links.
Earlier versions are kept (``deployment.keep_versions``); ``--rollback`` makes the previous
one current again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from riskwatch.core.cli import build_parser, run_stage
from riskwatch.core.config import Config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import folder_lock, fsync_dir, hold_lock, sha256_file
from riskwatch.state.artifacts import (
    CURRENT_LINK,
    DEPLOYMENT_LOCK_FILE,
    FIRST_VERSION,
    INGESTED_FILES,
    INGESTED_RECORD,
    MODEL_FILE,
    OPTIONAL_VERSION_FILES,
    REPORT_VERSION_FILES,
    VERSION_FILES,
    VERSION_INFO_FILE,
    VERSIONS_FOLDER,
    check_version_folder,
    current_version,
    list_versions,
    point_link,
    read_deployment_details,
    utc_now,
    version_number,
)
from riskwatch.state.records import VersionInfo, write_version_info

log = logging.getLogger("deployment")

STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
PUBLISHED_FILES = VERSION_FILES  # classic ingestion folders lack ingestedfiles.json (OPTIONAL_VERSION_FILES)
INGESTION_FILES = (INGESTED_FILES, INGESTED_RECORD)


def find_sources(output_model_path: Path, output_folder_path: Path) -> dict[str, Path]:
    """The files to publish; raise PipelineError naming any that is missing."""
    sources = {name: output_model_path / name for name in PUBLISHED_FILES if name not in INGESTION_FILES}
    sources.update({name: output_folder_path / name for name in INGESTION_FILES})
    missing = [str(path) for name, path in sources.items() if not path.is_file() and name not in OPTIONAL_VERSION_FILES]
    if missing:
        raise PipelineError(
            f"cannot deploy: {', '.join(missing)} missing; run ingestion.py, training.py and scoring.py first"
        )
    return {name: path for name, path in sources.items() if path.is_file()}


def reached_step(step: str) -> None:
    """Called as a publication passes each step: "staged", "renamed", "switched". Does nothing.

    The seam where the crash tests stop a deployment at a step to kill it there
    (``tests/paused_stage.py`` replaces it); the deployment itself never waits.
    """


def copy_durably(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())


def switch_current(prod_deployment_path: Path, version: str) -> None:
    """Point ``current`` at ``version`` and make sure the classic file links exist.

    The report's links lead nowhere until reporting.py has made the new version's report: never to another
    version's.
    """
    point_link(prod_deployment_path / CURRENT_LINK, f"{VERSIONS_FOLDER}/{version}")
    for name in (*PUBLISHED_FILES, VERSION_INFO_FILE, *REPORT_VERSION_FILES):
        link, wanted = prod_deployment_path / name, f"{CURRENT_LINK}/{name}"
        if not (link.is_symlink() and os.readlink(link) == wanted):
            point_link(link, wanted)
    fsync_dir(prod_deployment_path)


def remove_folder(folder: Path) -> None:
    """Delete a folder so that a crash midway never leaves a half-deleted version in sight."""
    trash = folder.with_name(f"{TRASH_PREFIX}{folder.name}-{os.getpid()}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(prod_deployment_path: Path) -> None:
    """Delete staging and trash folders an interrupted deployment left (safe: we hold the lock)."""
    folder = prod_deployment_path / VERSIONS_FOLDER
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
            log.info("removing %s, left by an interrupted deployment", entry)
            shutil.rmtree(entry, ignore_errors=True)


def rollback_target(prod_deployment_path: Path, current: str | None) -> str | None:
    """The version that served before ``current``, if kept, else the newest kept one older than it."""
    if current is None:
        return None
    kept = list_versions(prod_deployment_path)
    previous = read_deployment_details(prod_deployment_path / VERSIONS_FOLDER / current).previous_version
    if previous in kept:
        return previous
    older = [name for name in kept if version_number(name) < version_number(current)]
    return older[-1] if older else None


def prune_versions(prod_deployment_path: Path, keep: int) -> list[str]:
    """Delete the oldest versions beyond ``keep``; never the current one or its rollback target."""
    current = current_version(prod_deployment_path)
    protected = {current, rollback_target(prod_deployment_path, current)}
    versions = list_versions(prod_deployment_path)
    doomed = [name for name in versions if name not in protected][: max(0, len(versions) - keep)]
    for name in doomed:
        remove_folder(prod_deployment_path / VERSIONS_FOLDER / name)
        log.info("removed old version %s", name)
    return doomed


def stage_version(sources: dict[str, Path], prod_deployment_path: Path, version: str) -> tuple[Path, VersionInfo]:
    """Copy the sources into a staging folder, check the copies, and write ``version.json``."""
    staging = prod_deployment_path / VERSIONS_FOLDER / f"{STAGING_PREFIX}{version}"
    staging.mkdir(parents=True)
    try:
        for name, source in sources.items():
            copy_durably(source, staging / name)
        _, metrics, model_info = check_version_folder(staging)  # the copies: nothing can change after the check
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, PipelineError):
            raise PipelineError(f"cannot deploy from {sources[MODEL_FILE].parent}: {exc}") from None
        raise
    info = VersionInfo(
        version=version,
        deployed_at=utc_now(),
        previous_version=current_version(prod_deployment_path),
        model_sha256=metrics.model_sha256,
        f1=metrics.f1,
        roc_auc=metrics.roc_auc,
        trained_at=model_info.trained_at,
        sources={name: str(path) for name, path in sources.items()},
    )
    write_version_info(staging / VERSION_INFO_FILE, info)
    return staging, info


def same_model(folder: Path, sources: dict[str, Path]) -> bool:
    """Whether a version folder already holds this model with the same ingestion record.

    Publishing it again would only make a copy that pushes a distinct older version out of the
    kept ones, so rollback would reach the same model.
    """
    try:
        return all(sha256_file(folder / name) == sha256_file(sources[name]) for name in (MODEL_FILE, INGESTED_FILES))
    except OSError:
        return False


@dataclass(frozen=True)
class Publication:
    """What a deployment published: the version's record, and whether it was the model already serving."""

    info: VersionInfo
    unchanged: bool = False

    @property
    def version(self) -> str:
        return str(self.info.version)


def publish_deployment(
    output_model_path: Path, output_folder_path: Path, prod_deployment_path: Path, keep: int = 5
) -> Publication:
    """Publish the model, its scores and the ingestion record as a new version; return what was published.

    Raises PipelineError, leaving the served version as it was, when the files do not belong
    together, the model does not load, or another deployment is running.
    """
    sources = find_sources(output_model_path, output_folder_path)
    with folder_lock(prod_deployment_path, "deployment"):
        remove_leftovers(prod_deployment_path)
        serving = current_version(prod_deployment_path)
        if serving is not None and same_model(prod_deployment_path / VERSIONS_FOLDER / serving, sources):
            log.info("the model in %s is the one %s serves; no new version", output_model_path, serving)
            kept = read_deployment_details(prod_deployment_path / VERSIONS_FOLDER / serving)
            return Publication(replace(kept, version=serving), unchanged=True)
        existing = list_versions(prod_deployment_path)
        version = (version_number(existing[-1]).next() if existing else FIRST_VERSION).name
        staging, info = stage_version(sources, prod_deployment_path, version)
        reached_step("staged")
        os.rename(staging, prod_deployment_path / VERSIONS_FOLDER / version)
        fsync_dir(prod_deployment_path / VERSIONS_FOLDER)
        reached_step("renamed")
        switch_current(prod_deployment_path, version)
        reached_step("switched")
        prune_versions(prod_deployment_path, keep)
    log.info("deployed %s (F1 %s) to %s", version, info.f1, prod_deployment_path)
    return Publication(info)


def rollback_deployment(prod_deployment_path: Path) -> str:
    """Make the version that served before the current one current again; return its name."""
    with folder_lock(prod_deployment_path, "deployment"):
        current = current_version(prod_deployment_path)
        if current is None:
            raise PipelineError(f"nothing is deployed in {prod_deployment_path}; there is nothing to roll back")
        target = rollback_target(prod_deployment_path, current)
        if target is None:
            raise PipelineError(f"no version before {current} is kept in {prod_deployment_path}; cannot roll back")
        try:
            check_version_folder(prod_deployment_path / VERSIONS_FOLDER / target)
        except PipelineError as exc:
            raise PipelineError(f"cannot roll back to {target}: {exc}") from None
        switch_current(prod_deployment_path, target)
    log.info("rolled back from %s to %s in %s", current, target, prod_deployment_path)
    return target


def deployment_lock(prod_deployment_path: Path, owner: str) -> contextlib.AbstractContextManager[Path]:
    """The lock every command that changes the deployment holds (fullprocess.py too): one at a time."""
    path = prod_deployment_path / DEPLOYMENT_LOCK_FILE
    return hold_lock(path, owner, "the deployment is being changed by another run ({holder}); try again when it ends")


def describe_versions(prod_deployment_path: Path) -> list[str]:
    """One line per kept version: name, deployment time, F1, and a mark on the current one."""
    current = current_version(prod_deployment_path)
    lines = []
    for name in list_versions(prod_deployment_path):
        info = read_deployment_details(prod_deployment_path / VERSIONS_FOLDER / name)
        mark = "*" if name == current else " "
        f1 = "?" if info.f1 is None else info.f1
        lines.append(f"{mark} {name}  deployed {info.deployed_at or '?'}  F1 {f1}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--rollback", action="store_true", help="make the previous kept version current again")
    action.add_argument("--list", action="store_true", help="list the kept versions (* marks the current one)")
    args = parser.parse_args(argv)

    def work(config: Config) -> object:
        if args.list:
            lines = describe_versions(config.prod_deployment_path)
            print("\n".join(lines) if lines else f"nothing is deployed in {config.prod_deployment_path}")
            return lines
        with deployment_lock(
            config.prod_deployment_path, "deployment.py --rollback" if args.rollback else "deployment.py"
        ):
            if args.rollback:
                return rollback_deployment(config.prod_deployment_path)
            return publish_deployment(
                config.output_model_path, config.output_folder_path, config.prod_deployment_path, config.keep_versions
            )

    return run_stage("deployment", args, work)


if __name__ == "__main__":
    raise SystemExit(main())
