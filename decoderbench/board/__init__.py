"""Stage 5, the board: rows in, tables, figures and a site out (pure functions of rows; no scoring).

Aggregation and Markdown tables (:mod:`.leaderboard`); figures (:mod:`.plots`), the recovery phase diagram
(:mod:`.phase`), the scaling board (:mod:`.scaling`), unrolled message passing (:mod:`.unrolled`); the static
site (:mod:`.site`). Imports the stages below it.
"""
