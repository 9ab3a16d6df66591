"""Embedding moi in your own Tornado application.

Run it (moi starts its own Redis and local cluster when none is configured)::

    python example/app.py --port 8890

then open http://127.0.0.1:8890/, log in with any name and press "Say hello".
The job appears in the panel and goes Queued -> Running -> Success live.

What an application needs, and nothing more:

* ``MOIMessageHandler`` mounted at ``/moi-ws/``; it reads the user from the
  secure cookie ``user`` (override ``get_current_user`` to use your own auth);
* ``moi.js``, ``moi_list.js`` and ``moi.css`` served to the page
  (``moi.moi_js()``, ``moi.moi_list_js()`` and ``moi.moi_css()`` give their
  paths; the panel's markup is styled by ``moi.css``);
* ``submit(...)`` called from a handler, with the user's group id as parent;
* optionally, pages at ``/job/<id>`` and ``/group/<id>``: the panel links
  each node there unless ``moi_list.init`` gets another ``detailsUrl``.  They
  must show only the user's own nodes.

The login here trusts whatever name is typed: it stands in for the
application's real authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from typing import Any

import tornado.escape
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import StaticFileHandler

import moi
from moi import runtime
from moi.group import get_id_from_user
from moi.job import ctx_default, result_text, submit
from moi.websocket import MOIMessageHandler

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moi example</title>
  <link rel="stylesheet" href="/moi-static/moi.css"></head>
<body>
  <p>Logged in as <b id="user"></b>.</p>
  <form method="post" action="/hello">{xsrf}<button type="submit">Say hello</button></form>
  <div id="jobs"></div>
  <script src="/moi-static/moi.js"></script>
  <script src="/moi-static/moi_list.js"></script>
  <script>
    document.getElementById("user").textContent = {user_json};
    moi_list.init({group_json}, document.getElementById("jobs"));
  </script>
</body></html>
"""

NODE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moi example: {kind} {name}</title>
  <link rel="stylesheet" href="/moi-static/moi.css"></head>
<body><main>
  <h1>{kind}: {name}</h1>
  <p><span class="moi-status" data-status="{status}">{status}</span></p>
  <table class="moi-info">{rows}</table>
  <pre class="moi-result">{result}</pre>
  <p><a href="/">back</a></p>
</main></body></html>
"""

LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moi example: log in</title></head>
<body><form method="post">{xsrf}
  <label>Name <input name="user" required></label> <button type="submit">Log in</button>
</form></body></html>
"""


def hello(seconds: float = 2.0, **kwargs: Any) -> str:
    """The job: say what it is about to do, work a little, greet.

    It runs on an engine, which has none of this file's imports: import inside.
    """
    import time

    kwargs["moi_update_status"]("about to say hello")
    time.sleep(seconds)
    return "hi!"


class BaseHandler(tornado.web.RequestHandler):
    def get_current_user(self) -> str | None:
        cookie = self.get_secure_cookie("user")
        return cookie.decode() if cookie else None


class LoginHandler(BaseHandler):
    def get(self) -> None:
        self.write(LOGIN.format(xsrf=self.xsrf_form_html()))

    def post(self) -> None:
        self.set_secure_cookie("user", self.get_argument("user").strip() or "no-user")
        target = self.get_argument("next", "/")
        self.redirect(target if target.startswith("/") and not target.startswith("//") else "/")


class MainHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        user = self.current_user
        group_id = await asyncio.to_thread(get_id_from_user, user)
        page = PAGE.format(
            xsrf=self.xsrf_form_html(),
            user_json=tornado.escape.json_encode(user).replace("</", "<\\/"),
            group_json=tornado.escape.json_encode(group_id),
        )
        self.write(page)


class NodeHandler(BaseHandler):
    """``/job/<id>`` and ``/group/<id>``: where the panel's links go; the user's own nodes only."""

    @tornado.web.authenticated
    async def get(self, kind: str, node_id: str) -> None:
        def find() -> dict[str, Any] | None:
            tree = runtime.store().tree(get_id_from_user(self.current_user))
            return next((info for info in tree if info["id"] == node_id), None)

        info = await asyncio.to_thread(find)
        if info is None or info.get("type") != kind:
            raise tornado.web.HTTPError(404)
        esc = tornado.escape.xhtml_escape
        shown = ("id", "call", "parent", "date_created", "date_start", "date_end")
        rows = "".join(
            f"<tr><th>{key}</th><td>{esc(str(info.get(key) or ''))}</td></tr>" for key in shown
        )
        result = result_text(info) if info.get("status") else ""
        self.write(
            NODE.format(
                kind=kind,
                name=esc(str(info.get("name"))),
                status=esc(str(info.get("status") or "")),
                rows=rows,
                result=esc(result),
            )
        )


class HelloHandler(BaseHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        user = self.current_user

        def send() -> str:
            parent_id = get_id_from_user(user)
            job_id, _, _ = submit(ctx_default, parent_id, "The hello job", None, hello)
            return job_id

        # submit connects to the cluster and Redis: keep it off the event loop
        await asyncio.to_thread(send)
        self.redirect("/")


def make_app(cookie_secret: str) -> tornado.web.Application:
    """The example application: pages, the scripts and stylesheet, and the websocket."""
    static = os.path.dirname(moi.moi_js())
    return tornado.web.Application(
        [
            (r"/", MainHandler),
            (r"/login", LoginHandler),
            (r"/hello", HelloHandler),
            (r"/(job|group)/([A-Za-z0-9_.:-]{1,128})", NodeHandler),
            (r"/moi-ws/", MOIMessageHandler),
            (r"/moi-static/(moi\.js|moi_list\.js|moi\.css)", StaticFileHandler, {"path": static}),
        ],
        cookie_secret=cookie_secret,
        login_url="/login",
        xsrf_cookies=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8890, help="0 picks a free one")
    args = parser.parse_args()
    app = make_app(os.environ.get("EXAMPLE_COOKIE_SECRET") or secrets.token_hex(32))
    sockets = bind_sockets(args.port, address="127.0.0.1")
    HTTPServer(app).add_sockets(sockets)
    port = sockets[0].getsockname()[1]  # the one picked when asked for port 0
    print(f"moi example on http://127.0.0.1:{port}/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
