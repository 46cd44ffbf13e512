"""The app database's tables in PostgreSQL, with the mapping from DESIGN.md's "Target mapping".

Used for the COPY ceiling and the plain-loop reference, so that they load the same types
syncd is meant to produce: INTEGER→bigint, REAL→double precision, VARCHAR(n)→varchar(n),
BOOLEAN→boolean, DATETIME→timestamp, JSON→jsonb.
"""

from __future__ import annotations

TABLES = ("users", "documents")

CREATE = {
    "users": """
        CREATE TABLE users (
            id bigint NOT NULL,
            email varchar(255) NOT NULL,
            name text,
            is_active boolean NOT NULL,
            created_at timestamp NOT NULL,
            settings jsonb
        )""",
    "documents": """
        CREATE TABLE documents (
            id text NOT NULL,
            user_id bigint NOT NULL,
            title varchar(200),
            content text,
            chunk_index bigint NOT NULL,
            score double precision,
            metadata jsonb,
            created_at timestamp NOT NULL
        )""",
}

# Built after the data is in, in this order: what the source declares (primary keys,
# UNIQUE, the secondary index, the foreign key).
CONSTRAINTS = (
    "ALTER TABLE users ADD PRIMARY KEY (id)",
    "ALTER TABLE documents ADD PRIMARY KEY (id)",
    "CREATE UNIQUE INDEX users_email_key ON users (email)",
    "CREATE INDEX idx_documents_user_id ON documents (user_id)",
    "ALTER TABLE documents ADD FOREIGN KEY (user_id) REFERENCES users (id)",
)

COLUMNS = {
    "users": ("id", "email", "name", "is_active", "created_at", "settings"),
    "documents": ("id", "user_id", "title", "content", "chunk_index", "score", "metadata",
                  "created_at"),
}
