"""Sequences: a company's ordered steps and the leads enrolled in them. `steps` defines and
checks the steps; `repository` holds the SQL and the enrolment moves (schedule, pause, stop)
that ingest's API and the scheduler's step handler and reactors share."""
