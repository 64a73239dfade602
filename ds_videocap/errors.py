"""The one base for user-facing errors: the CLI prints these as one line, without a traceback."""


class UserError(ValueError):
    """A problem with the user's input (recipe, JSON, annotation file, video, model folder).

    The message names the file, the record or field, and what was expected.
    """
