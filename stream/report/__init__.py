"""``audioclust-report``: a self-contained HTML page of the clusters in stream records.

``records`` reads the records back, ``snippets`` chooses and cuts the windows to listen to,
``page`` lays out the HTML, ``build`` ties them together, ``cli`` is the command.
"""
