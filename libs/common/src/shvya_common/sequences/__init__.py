"""Sequences: a company's ordered steps and the leads enrolled in them. `steps` defines and
checks the steps; `definitions` stores sequences and edits them; `enrolments` holds the moves
(enrol, schedule, pause, stop) that ingest's API and the scheduler's handler and reactors share;
`queries` is what the API reads."""
