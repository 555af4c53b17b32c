"""Results and reports: typed result objects (:mod:`.results`), the HTML report (:mod:`.html`)
with its figures (:mod:`.plots`), run folders read back (:mod:`.runs`).

Importing this package loads no plotting library; matplotlib is needed only to draw.
"""
