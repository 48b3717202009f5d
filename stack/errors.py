"""Errors meant for the user: the CLI prints the message alone, without a traceback."""


class StackError(Exception):
    pass
