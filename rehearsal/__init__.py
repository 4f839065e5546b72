"""The local rehearsal stack: real services the rollback is rehearsed against."""
