"""SHVYA's shared library: settings, database, job bus, message contracts, logging and metrics.

Every service imports from here and never from another service, so the contracts and the job
bus are the only coupling between them.
"""
