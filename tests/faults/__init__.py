"""The fault suite of issue 7: the real platform as separate processes, faults injected into it,
outcomes counted per lead. `harness` owns the servers and processes, `load` posts the messages,
`providers` counts what reached WhatsApp Cloud and SMTP, `accounting` waits for quiescence and
counts, `scenarios` puts them together; `bench/faults/run.py` is the long form."""
