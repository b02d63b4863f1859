"""The explorer: the collection in a browser (search, classify, dashboard, embedding map, jobs).

An HTTP service that is an internal gRPC client of the five services. It keeps no state of its own:
every page is computed from the indexer's and the fetcher's answers, and images reach the browser
only through the presigned thumbnail URLs the indexer returns.
"""
