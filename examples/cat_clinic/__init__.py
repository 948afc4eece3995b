"""The cat clinic: nplus1loader's demo application.

A Flask app where cat owners browse veterinarians at clinics.  Its Success
Stories page walks lazy relationships (clinic -> veterinarians ->
appointments -> cats): a handful of queries on QA's small database, thousands
in production.  ``queries.py`` holds the page's query the naive way, the
nplus1loader way (same loop, one option added) and the hand-written eager way.

Run ``python -m examples.cat_clinic`` from the repository root; see README.md.
"""
