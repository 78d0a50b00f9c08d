"""The edge cache: a Varnish in front of the API (``vcl.render_vcl``), purged by surrogate key
through the xkey vmod of varnish-modules (``purge.EdgePurger``).

The API says what may be cached with ``Cache-Control`` and what each response is about with
``Surrogate-Key``; Varnish shares only responses marked ``public``, and the invalidation
consumer purges every object tagged with a changed key.
"""
