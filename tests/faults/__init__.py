"""The fault suite (issue 5): real servers killed, stopped and fed hostile
input, with figures. ``make faults`` runs it at full size; ``make test`` runs
the reduced size (``JOBSTREAM_FAULTS`` unset)."""
