"""Endpoints and calls backed by any program (``programs``), each under its own supervisor (``supervision``,
``subreaper``). ``dpmsf_core.commands.run_program`` is the documented path; the names live in ``programs``."""

from .programs import ProgramResult, build_cache, command_function, run_program, run_program_sync

__all__ = ["ProgramResult", "build_cache", "command_function", "run_program", "run_program_sync"]
