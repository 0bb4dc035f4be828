"""Schema migrations, applied in order by ``jobstream db migrate`` and at
server start (playhouse.migrations). Each file freezes the models it needs:
later changes to db.py must come as new migrations, never edits here."""
