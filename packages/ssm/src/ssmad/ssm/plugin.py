"""ssmad-ssm plugin: registers this package's components."""

from ssmad.core import hookimpl


@hookimpl
def ssmad_register(register):
    pass
