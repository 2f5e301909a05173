"""Storage: the session database, recording and restoring sessions, the audit trail, and
writing files (study copies, exports) so that nothing half-written is kept."""
