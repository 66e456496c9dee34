"""The model: its families and exact drivers, the choice among them, evaluation, the current clients."""
