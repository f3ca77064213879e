"""Subcommands of ``eossl`` that live in modules of their own.

Each module defines ``COMMAND`` (its name), ``add_parser(subparsers)`` and ``run(args) -> int``;
a module may instead (or also) define
``DATA_COMMAND``, ``add_data_parser(data_subparsers)`` and ``run_data(args)`` for an
``eossl data NAME`` command. The CLI discovers them, so adding a command touches no shared file. Errors are raised as
EosslError and printed by the CLI as one line.
"""
