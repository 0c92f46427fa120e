"""Declarative REST pull (seed 004): what a source spec says and how its pages are read.

Pure modules (values in, values out): :mod:`.model` (requests, pages, errors),
:mod:`.spec` (parse and check a ``sourceSpec``), :mod:`.expr` (the ``@{…}``
expression subset), :mod:`.dotnet_time` (the seed's date formats),
:mod:`.request` (placeholders, the schedule window), :mod:`.paging` (the five
pagination types), :mod:`.records` (contentPath, explode, keep / skip / wrap),
:mod:`.schedule` (``every`` / ``cron``). I/O: :mod:`.http` (the HTTP client with
retries), used by the sources stage and the gateway's preview.
"""
