"""The state database: engine, mapped tables, migrations."""
