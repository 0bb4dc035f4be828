"""Artifact bytes move into the database, so every server of a cluster can
serve and delete every artifact: job_artifact_chunk holds them in chunks,
job_artifact_upload marks the chunks of uploads still in progress (and those
to remove), and each artifact row names the upload whose chunks are its
bytes. Neither of the two new tables has a foreign key to job: a delete must
not cascade to large blobs in its own transaction, so it marks the job's
uploads for the sweep instead (store.py, Store.delete).

Rows of earlier versions keep upload_id NULL until the server whose data
directory holds their file imports it at start-up (legacy_artifacts.py):
only that server can read the file, and with several servers on one
PostgreSQL the migration runs in whichever starts first. A partial index
finds those rows without a scan and is empty once they are imported.
"""

from __future__ import annotations

from typing import Any

import peewee as pw


def up(migrator: Any, db: pw.Database) -> None:
    """Creates job_artifact_upload and job_artifact_chunk, adds
    job_artifact.upload_id and the index of rows still to import."""

    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class JobArtifactUpload(Base):
        upload_id = pw.TextField(primary_key=True)
        job_id = pw.TextField(index=True)
        lease_id = pw.TextField()
        chunks = pw.IntegerField(default=0)
        create_time = pw.BigIntegerField()

        class Meta:
            table_name = "job_artifact_upload"

    class JobArtifactChunk(Base):
        job_id = pw.TextField()
        upload_id = pw.TextField()
        chunk_index = pw.IntegerField()
        data = pw.BlobField()

        class Meta:
            table_name = "job_artifact_chunk"
            primary_key = pw.CompositeKey("job_id", "upload_id", "chunk_index")

    db.create_tables([JobArtifactUpload, JobArtifactChunk])
    migrator.migrate(migrator.add_column("job_artifact", "upload_id", pw.TextField(null=True)))
    db.execute_sql(
        "CREATE INDEX job_artifact_legacy ON job_artifact (job_id, name) WHERE upload_id IS NULL"
    )
