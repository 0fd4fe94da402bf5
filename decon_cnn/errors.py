class DeconError(Exception):
    """A configuration or data problem the user can fix; the message says how."""


class DatasetNotFound(DeconError, FileNotFoundError):
    pass
