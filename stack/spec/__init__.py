"""`stack.yaml`: the schema (models), reading the file (source), loading with positions (loader), the
problems it reports (problems), units."""

from stack.spec.loader import LoadedSpec, find_spec_file, load_spec
from stack.spec.models import Api, Spec
from stack.spec.problems import Problem, SpecError
from stack.spec.source import SPEC_FILENAME

__all__ = ["SPEC_FILENAME", "Api", "LoadedSpec", "Problem", "Spec", "SpecError", "find_spec_file", "load_spec"]
