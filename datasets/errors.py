"""Error type for missing or malformed on-disk datasets."""

DATA_DIR_FLAG = "--data_dir_local"


class DataError(ValueError):
    """Raised when a dataset is missing or malformed on disk.

    Messages name the expected on-disk layout and the flag to set.
    """


def data_error(problem, layout):
    """Build a DataError for `problem`, describing the expected `layout`."""
    return DataError(f"{problem}\nExpected layout:\n{layout}\n"
                     f"Point {DATA_DIR_FLAG} at the directory holding these files.")
