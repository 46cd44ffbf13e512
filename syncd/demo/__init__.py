"""`syncd demo`: the whole path on a generated app and the embedded PostgreSQL."""
