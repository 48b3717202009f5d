"""`stack.yaml`: the schema (models), loading with positions (loader), units."""

from stack.spec.loader import SPEC_FILENAME, LoadedSpec, Problem, SpecError, find_spec_file, load_spec
from stack.spec.models import Api, Spec

__all__ = ["SPEC_FILENAME", "Api", "LoadedSpec", "Problem", "Spec", "SpecError", "find_spec_file", "load_spec"]
