"""The SSH executor: pool, host keys, sftp, rsync, bounded output."""
