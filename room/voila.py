"""Voila's configuration for the classroom server (``./run room``, room/serve.py).

Voila loads this file because room/serve.py passes ``--Voila.config_file_paths=room``
(the file must be called voila.py).  It adds two things to Voila's own
mechanisms, and nothing hand-made for the password:

* Admission is Jupyter Server's token (``--token``, the PasswordIdentityProvider
  Voila uses): the lab's page is ``@tornado.web.authenticated``, so a request
  without the token is sent to the login page before any kernel is touched.
* The ceiling is a kernel manager (``VoilaConfiguration.multi_kernel_manager_class``,
  which Voila wraps with its preheated pool): at most ``RoomKernelManager.max_kernels``
  kernels exist at once, the pool's included.  Past that, starting one raises
  HTTP 503, and Voila's error page renders this repo's template
  room/jupyter/voila/templates/room/503.html ("the room is full").
"""
from __future__ import annotations

import asyncio

from jupyter_server.auth.identity import PasswordIdentityProvider
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets import Float, Int

c = get_config()  # noqa: F821  (traitlets defines it while it loads this file)


class RoomKernelManager(AsyncMappingKernelManager):
    """At most ``max_kernels`` kernels, the preheated pool's included.

    Voila builds its kernel manager as a subclass of this one (the pool lives
    in that subclass, voila/voila_kernel_manager.py), so every kernel, a
    student's or the pool's, is started through ``start_kernel`` here:

    * a student arriving when the pool has a kernel takes it (no new kernel);
    * the pool refills only while a place is free: a refill past the ceiling is
      dropped from the pool, so no student ever waits on a kernel that cannot
      start; when a kernel is shut down (the student closed the page, or it was
      culled) the pool is refilled as far as places allow;
    * a student arriving with the pool empty and the room full gets HTTP 503,
      before any kernel is started, from the same request, once ``full_grace``
      seconds (3) have passed without a place freeing (so a reload, whose old
      page gives its place back a moment later, gets the lab).
    """

    max_kernels = Int(30, config=True,
                      help="The most kernels that may exist at once, preheated pool included.")
    full_grace = Float(3.0, config=True,
                       help="Seconds a student's request waits for a place before the full page.")

    def __init__(self, **kwargs):
        self._room_ids: set[str] = set()    # kernels started here and not yet shut down
        self._room_starting = 0             # starts under way (their ids are not known yet)
        self._room_closing = False
        super().__init__(**kwargs)

    def room_count(self) -> int:
        live = set(self.list_kernel_ids())
        return len(self._room_ids & live) + self._room_starting

    async def start_kernel(self, *args, **kwargs):
        # A student reloading the lab in a full room: the old page's request to
        # give its place back reaches the server just after (or while) the new
        # page's request asks for one.  Such a request waits for a place a few
        # seconds (bounded, never longer) before it gets the full page; a
        # refill of the pool does not wait.
        refill = self._in_pool(asyncio.current_task())
        deadline = asyncio.get_running_loop().time() + (0 if refill else self.full_grace)
        while (not self._room_closing and self.room_count() >= self.max_kernels
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.1)
        # From the check to the reservation there is no await, so two requests
        # cannot both take the last place.
        if self._room_closing or self.room_count() >= self.max_kernels:
            if self._drop_from_pool(asyncio.current_task()):
                self.log.info("room full (%d of %d kernels): the pool is not refilled",
                              self.room_count(), self.max_kernels)
            else:
                self.log.warning("room full (%d of %d kernels): a student gets the full page",
                                 self.room_count(), self.max_kernels)
            raise web.HTTPError(
                503, "All %d places are taken.", self.max_kernels, reason="The room is full")
        self._room_starting += 1
        try:
            kernel_id = await super().start_kernel(*args, **kwargs)
        finally:
            self._room_starting -= 1
        self._room_ids.add(kernel_id)
        return kernel_id

    async def shutdown_kernel(self, kernel_id, *args, **kwargs):
        try:
            return await super().shutdown_kernel(kernel_id, *args, **kwargs)
        finally:
            self._room_ids.discard(kernel_id)
            self._refill()

    async def shutdown_all(self, *args, **kwargs):
        self._room_closing = True
        return await super().shutdown_all(*args, **kwargs)

    def _in_pool(self, task) -> bool:
        return task is not None and any(task in pool for pool in getattr(self, "_pools", {}).values())

    def _drop_from_pool(self, task) -> bool:
        """A pool refill that would pass the ceiling leaves the pool at once, so
        the next student is not handed a kernel that will never start (and
        Voila's pool code never reads its failure).  Was ``task`` a refill?"""
        for pool in getattr(self, "_pools", {}).values():
            if task is not None and task in pool:
                pool.remove(task)
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
                return True
        return False

    def _refill(self) -> None:
        fill = getattr(self, "fill_if_needed", None)       # only with --preheat_kernel
        notebook = getattr(self, "notebook_path", None)
        if fill is not None and notebook and not self._room_closing:
            fill(notebook_name=notebook)


class RoomIdentityProvider(PasswordIdentityProvider):
    """Jupyter's token check, plus the XSRF cookie Voila's page needs to give its
    place back.

    When the lab's tab is closed, Voila's page (its widget manager's
    ``beforeunload`` handler) posts to /voila/api/shutdown/<kernel> with the
    ``_xsrf`` cookie's value, and Jupyter Server refuses a cookie-authenticated
    POST without it.  Voila never sets that cookie on the lab's page (nothing in
    the page's request reads ``handler.xsrf_token``), so the POST was refused
    (HTTP 403) and the kernel kept its place until the idle cull.  Reading the
    token here, once a student is known, makes tornado set the cookie.
    """

    async def get_user(self, handler):
        user = await super().get_user(handler)
        if user is not None:
            # As JupyterHandler.prepare() does with our answer next; tornado's
            # xsrf_token reads it.
            handler.current_user = user
            handler.xsrf_token          # sets the _xsrf cookie when the browser has none
        return user


c.Voila.identity_provider_class = RoomIdentityProvider
c.VoilaConfiguration.multi_kernel_manager_class = RoomKernelManager
# Jupyter's login page would let anyone holding the token set a new password,
# written to the teacher's Jupyter config directory; a student must not.
c.PasswordIdentityProvider.allow_password_change = False
# The app's template (app/voila/templates/kvm-lab: the lab's, without CDN links)
# with one page added, 503.html (room/serve.py puts room/jupyter and app on
# JUPYTER_PATH so Voila finds them).
c.VoilaConfiguration.template = "room"
