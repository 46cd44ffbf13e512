"""PostgreSQL plumbing every store and concern shares: connections and error translation, the
embedded server, exact date/time codecs, syncd's state (checkpoints, owners, rejects, echo
records), type families and converters, and the trigger capture with its changelog reader."""
