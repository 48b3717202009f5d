"""A problem of a stack.yaml — file, line, column, field, message — and the error that carries them all."""

from __future__ import annotations

from dataclasses import dataclass

from stack.errors import StackError

Path_ = tuple[str | int, ...]  # where in the document: keys and list indexes, as pydantic's error locations


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        if self.line <= 0:  # about the file as a whole
            return self.message
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class SpecError(StackError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        if len(problems) == 1 and problems[0].line <= 0:
            super().__init__(str(problems[0]))
            return
        super().__init__(f"{count} in {problems[0].file}:\n" + "\n".join(f"  {p}" for p in problems))


def dotted(path: Path_) -> str:
    text = ""
    for part in path:
        if part == "<key>":
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
