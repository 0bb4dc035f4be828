"""What differs between SQLite and PostgreSQL, decided once per database:
the rest of the store reads these flags and fragments instead of asking
which backend it runs on.

SQLite has one writer at a time (ours), so a plain SELECT is enough;
PostgreSQL servers race for the same rows and must skip locked ones
(``SELECT ... FOR UPDATE SKIP LOCKED``), lock a job's row before deciding
what its delete or an upload's completion does, and order their change-log
writes (see changelog.py).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import peewee as pw

from jobstream.server.db import is_sqlite

SQLITE_MAX_PARAMS = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
"""SQLite's default SQLITE_MAX_VARIABLE_NUMBER: 32,766 since 3.32, 999
before (builds may raise it, never lower it below these)."""

POSTGRES_MAX_PARAMS = 65_535
"""PostgreSQL's wire protocol counts a statement's parameters in 16 bits."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Dialect:
    """The backend's ways, for one database."""

    sqlite: bool
    """One server per database file: nobody else writes."""
    param: str
    """The driver's parameter mark (``?`` or ``%s``)."""
    max_params: int
    """Most parameters one statement may bind."""

    @classmethod
    def of(cls, db: pw.Database) -> Dialect:
        """The dialect of ``db``."""
        sqlite = is_sqlite(db)
        return cls(
            sqlite=sqlite,
            param=db.param,
            max_params=SQLITE_MAX_PARAMS if sqlite else POSTGRES_MAX_PARAMS,
        )

    @property
    def shared(self) -> bool:
        """Several servers may write the database at once (PostgreSQL)."""
        return not self.sqlite

    @property
    def skip_locked(self) -> bool:
        """Row picks (acquire, sweeps, purge) skip rows another server holds."""
        return self.shared

    @property
    def row_locks(self) -> bool:
        """A job's row is locked (FOR UPDATE) before a delete or an upload's
        completion decides what to do with it."""
        return self.shared

    @property
    def ordered_changes(self) -> bool:
        """Change-log writers take a lock so positions commit in order."""
        return self.shared

    def json_array(self, *items: str) -> str:
        """A JSON array of SQL expressions."""
        name = "json_array" if self.sqlite else "json_build_array"
        return f"{name}({', '.join(items)})"

    def json_object(self, **members: str) -> str:
        """A JSON object of SQL expressions, by member name."""
        name = "json_object" if self.sqlite else "json_build_object"
        pairs = ", ".join(f"'{key}', {value}" for key, value in members.items())
        return f"{name}({pairs})"

    def json_of(self, column: str) -> str:
        """A text column holding JSON, as a JSON value (not a string)."""
        return f"json({column})" if self.sqlite else f"{column}::json"

    def json_member(self, column: str, path: tuple[str, ...]) -> str:
        """The member at ``path`` of a text column holding a JSON object, as
        compact JSON text (a string quoted, a number or boolean bare), NULL
        when absent. The path's keys must be plain names (validation.py)."""
        if self.sqlite:
            return f"""("{column}" -> '$.{".".join(path)}')"""
        return f"""(("{column}"::jsonb #> '{{{",".join(path)}}}')::text)"""

    def json_text(self, column: str, key: str) -> str:
        """The string member ``key`` of a text column holding a JSON object,
        as SQL text. ``key`` must be a plain name."""
        if self.sqlite:
            return f"""json_extract("{column}", '$.{key}')"""
        return f"""("{column}"::json ->> '{key}')"""

    def json_rows(self, row: str, page: str, order: str) -> str:
        """One JSON text holding ``row`` for each row of the query ``page``
        (NULL when there are none). SQLite's json_group_array does not
        promise its input's order: callers sort by ``order`` themselves."""
        if self.sqlite:
            return f"SELECT json_group_array({row}) FROM ({page})"
        return f"SELECT json_agg({row} ORDER BY {order})::text FROM ({page}) AS p"
