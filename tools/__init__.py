"""Command-line tools that work on saved model artifacts (``python -m tools.<name> --help``)."""
