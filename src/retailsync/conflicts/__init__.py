"""The conflict ledger: every conflict a merge policy met, recorded durably, and resolved in
one of three tiers (automatic, asynchronous reconciliation by rules, or by a person)."""
