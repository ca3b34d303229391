"""Offscreen RGB and metric depth of MuJoCo cameras, with the camera parameters that back-project them.

MetaWorld's own renderer draws a 4096² shadow map with 4x multisampling: about 80-100 ms a frame on a CPU,
nearly all of it shadows. The renderer here turns shadows, reflections and multisampling off before its GL
context exists (they are fixed then), which brings RGB + depth of a 128x128 camera to a few milliseconds.

Conventions (checked against MuJoCo's ray casting in the tests):
- intrinsics: fx = fy = (H/2) / tan(fovy/2), principal point at the image centre ((W-1)/2, (H-1)/2);
- extrinsics: camera-to-world in the OpenCV convention (x right, y down, z forward), R = cam_xmat diag(1,-1,-1),
  t = cam_xpos, since MuJoCo cameras look along -z with y up;
- depth: metres along the optical axis (z), as `lerobot_flowstep.core.geometry` back-projects it;
- a fixed camera whose image comes out upside down (its image "down" points up in the world) is turned by
  180 degrees, and its extrinsics with it (R diag(-1,-1,1), K unchanged because the principal point is
  centred), so that stored images look upright.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

GL_BACKENDS = ("egl", "osmesa", "glfw")
GL_HELP = (
    "MuJoCo renders offscreen through MUJOCO_GL: 'egl' needs only the EGL library that most GPU drivers and "
    "Mesa ship (apt install libegl1), 'osmesa' needs libosmesa6 (apt install libosmesa6), 'glfw' needs a display."
)
# OpenCV camera axes from MuJoCo's (y up, looking along -z).
MUJOCO_TO_OPENCV = np.diag([1.0, -1.0, -1.0])
TURN_180 = np.diag([-1.0, -1.0, 1.0])


_DEFAULTED: list[bool] = []  # whether MUJOCO_GL came from `default_gl_backend`, for the error message


def default_gl_backend() -> str:
    """Set MUJOCO_GL to 'egl' unless the user chose one; must run before MuJoCo is first imported, because
    MuJoCo reads it once, at import."""
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl"
        _DEFAULTED.append(True)
    return os.environ["MUJOCO_GL"]


def _gl_error(err: BaseException) -> RuntimeError:
    chosen = "this package's default" if _DEFAULTED else "set by you"
    return RuntimeError(
        f"MuJoCo could not render offscreen with MUJOCO_GL='{os.environ.get('MUJOCO_GL')}' ({chosen}): "
        f"{type(err).__name__}: {err}. Values MuJoCo accepts: {', '.join(GL_BACKENDS)}. {GL_HELP} "
        "MUJOCO_GL is read once, when MuJoCo is imported: set it before Python starts."
    )


def import_mujoco() -> Any:
    """MuJoCo, imported with an offscreen GL backend; a clear error when the `metaworld` extra is missing or
    no GL context can be had (MuJoCo sets up GL when it is imported)."""
    default_gl_backend()
    missing = [name for name in ("mujoco", "metaworld") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"{' and '.join(missing)} not installed: the MetaWorld env needs the `metaworld` extra "
            "(pip install 'lerobot_policy_flowstep[metaworld]'), which pins a MuJoCo that works with MetaWorld 3."
        )
    try:
        import mujoco
    except (ImportError, AttributeError, RuntimeError, OSError) as err:
        raise _gl_error(err) from err
    return mujoco


def camera_intrinsics(fovy_degrees: float, height: int, width: int) -> np.ndarray:
    focal = (height / 2.0) / np.tan(np.deg2rad(fovy_degrees) / 2.0)
    return np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def camera_extrinsics(cam_xmat: np.ndarray, cam_xpos: np.ndarray, turned: bool = False) -> np.ndarray:
    """Camera-to-world (4, 4), OpenCV axes, from MuJoCo's camera frame; `turned`: the image is rotated 180°."""
    pose = np.eye(4)
    rotation = np.asarray(cam_xmat, dtype=np.float64).reshape(3, 3) @ MUJOCO_TO_OPENCV
    pose[:3, :3] = rotation @ TURN_180 if turned else rotation
    pose[:3, 3] = cam_xpos
    return pose


class CameraRenderer:
    """RGB (H, W, 3) uint8 and depth (H, W) float32 metres of named cameras of one MuJoCo model.

    Raises an error naming the camera and the cameras the model has for an unknown camera, and one naming the
    GL backend tried and what to install when no GL context can be made.
    """

    def __init__(self, model: Any, cameras: list[str] | tuple[str, ...], height: int, width: int):
        mujoco = import_mujoco()
        known = [model.camera(i).name for i in range(model.ncam)]
        unknown = [c for c in cameras if c not in known]
        if unknown:
            raise ValueError(f"Camera(s) {unknown} are not in the MetaWorld model; it has {known}.")
        self.cameras = list(cameras)
        self.height, self.width = height, width
        self._ids = {c: model.camera(c).id for c in cameras}
        self._fovy = {c: float(model.cam_fovy[self._ids[c]]) for c in cameras}
        # Fixed for the life of a GL context, so set before it is created.
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        # One GL context and one scene, as `mujoco.Renderer` sets them up, but rendered once per camera and frame
        # (see `render`).
        gl = None
        try:
            gl = mujoco.GLContext(width, height)
            gl.make_current()
            self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        except Exception as err:  # each GL backend fails in its own way when its library is missing
            if gl is not None:
                gl.free()
            raise _gl_error(err) from err
        self._gl = gl
        # A context nobody closed would be freed by GLContext.__del__ during interpreter shutdown, once EGL's
        # module globals are gone: an "Exception ignored in GLContext.__del__" traceback at exit. It is freed at
        # exit instead, while EGL still works (atexit runs the last-registered hook first, so this runs before
        # the eglTerminate MuJoCo registers with its first context). The hook holds only a weak reference.
        self._exit_hook = _close_at_exit(weakref.ref(self))
        atexit.register(self._exit_hook)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._context.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._mujoco, self._model = mujoco, model
        self._scene = mujoco.MjvScene(model, maxgeom=10_000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._option = mujoco.MjvOption()
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        extent = model.stat.extent
        self._near, self._far = model.vis.map.znear * extent, model.vis.map.zfar * extent
        self._rgb = np.empty((height, width, 3), dtype=np.uint8)
        self._z = np.empty((height, width), dtype=np.float32)
        self._intrinsics = {c: camera_intrinsics(self._fovy[c], height, width) for c in cameras}
        self._turned: dict[str, bool] = {}

    def intrinsics(self, camera: str) -> np.ndarray:
        return self._intrinsics[camera]

    def extrinsics(self, data: Any, camera: str) -> np.ndarray:
        """Read every frame: a camera on the arm (gripperPOV) moves."""
        i = self._ids[camera]
        if camera not in self._turned:
            # Decided once, on the first pose: an image whose "down" axis points up in the world is upside down.
            down = np.asarray(data.cam_xmat[i]).reshape(3, 3) @ MUJOCO_TO_OPENCV[:, 1]
            self._turned[camera] = bool(down[2] > 0)
        return camera_extrinsics(data.cam_xmat[i], data.cam_xpos[i], self._turned[camera])

    def render(self, data: Any, camera: str) -> tuple[np.ndarray, np.ndarray]:
        """RGB and depth of one camera at the current state (extrinsics first, so the turn is decided).

        Both come from one render pass. `mujoco.Renderer` draws the scene twice for them (a colour pass, then a
        segmentation pass whose depth it reads); the depth buffer of the colour pass is the same everywhere
        the scene has geometry (bit for bit, tested), and one pass costs about half of two. Pixels that see only
        the sky read the skybox's distance (tens of metres) rather than the far plane; both lie far outside
        any workspace crop."""
        if camera not in self._turned:
            self.extrinsics(data, camera)
        mujoco = self._mujoco
        self._gl.make_current()
        self._camera.fixedcamid = self._ids[camera]
        mujoco.mjv_updateScene(
            self._model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        mujoco.mjr_render(self._rect, self._scene, self._context)
        mujoco.mjr_readPixels(self._rgb, self._z, self._rect, self._context)
        depth = linear_depth(self._z, self._near, self._far)
        # OpenGL's rows run bottom-up.
        rgb, depth = self._rgb[::-1], depth[::-1]
        if self._turned[camera]:
            rgb, depth = rgb[::-1, ::-1], depth[::-1, ::-1]
        return rgb.copy(), depth.copy()  # copies: the read buffers are reused for the next frame

    def close(self) -> None:
        """Free the GL context; safe to call more than once."""
        if self._gl is not None:
            atexit.unregister(self._exit_hook)
            # MjrContext.free deletes its GL objects in the current context, which another env may have taken.
            self._gl.make_current()
            self._context.free()
            self._gl.free()
            self._gl = None


def _close_at_exit(ref: weakref.ref[CameraRenderer]) -> Callable[[], None]:
    def close() -> None:
        renderer = ref()
        if renderer is not None:
            renderer.close()

    return close


def linear_depth(z: np.ndarray, near: float, far: float) -> np.ndarray:
    """Metric depth (float32 metres) from MuJoCo's reversed-Z depth buffer (`mjDEPTH_ZEROFAR`, 1 at `near`,
    0 at `far`), computed exactly as `mujoco.Renderer` does: the projection's coefficients in float32, as
    glFrustum has them, and the division in float64."""
    zfar, znear = np.float32(far), np.float32(near)
    c = -(zfar + znear) / (zfar - znear)
    d = -(np.float32(2) * zfar * znear) / (zfar - znear)
    c, d = np.float32(-0.5) * c - np.float32(0.5), np.float32(-0.5) * d
    return (d / (z.astype(np.float64) + c)).astype(np.float32)
