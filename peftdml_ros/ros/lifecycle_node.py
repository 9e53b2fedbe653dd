"""peftdml_lifecycle_node: the node as a managed (lifecycle) node, for systems that bring their
nodes up in order (Nav2's lifecycle manager, launch_ros's LifecycleNode, `ros2 lifecycle set`).

One implementation: the transitions run the pieces that PeftdmlNode's constructor runs in one go
(node.py), so both variants process and publish alike.

  (start)      declare the parameters (a parameters file is needed, as for peftdml_node)
  configure    check the parameters, load the model (build or load the TensorRT engine), create
               the outputs as lifecycle publishers
  activate     enable the outputs; subscribe to the sensors and /tf_static, start the timers and
               the inference worker
  deactivate   unsubscribe, stop the timers, let the worker finish its frame; disable the outputs
  cleanup      destroy the outputs, release the detector (and the memory of its model)
  shutdown     release whatever the node still holds
  (error)      an unexpected exception in a transition: release everything, back to unconfigured

Nothing is published unless the node is active, /diagnostics included: an inactive node is
paused on purpose, and its sensor statuses would read as sensor failures to an aggregator. The
node's state is on its lifecycle services and ~/transition_event.

A transition that fails for a known reason (a parameter value, a model that does not load)
returns FAILURE, logs why and leaves the node where it was, so it can be fixed (run-time
parameters can be set while unconfigured) and configured again. Parameter changes at run time
work in every state; configure reads the current values.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import rclpy
from lifecycle_msgs.msg import State
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import (
    LifecycleNode,
    LifecyclePublisher,
    LifecycleState,
    TransitionCallbackReturn,
)
from rclpy.signals import SignalHandlerOptions

from peftdml_ros.core.errors import ConfigError, PeftdmlError
from peftdml_ros.ros import params
from peftdml_ros.ros.node import NODE_NAME, PeftdmlNode, _make_detector, _wants_help
from peftdml_ros.ros.params import NodeConfig
from peftdml_ros.ros.stop_signals import StopSignals

EXECUTABLE = "peftdml_lifecycle_node"
AUTOSTART_FLAG = "--autostart"
# Primary states from which the shutdown transition exists.
SHUTDOWN_FROM = frozenset(
    {State.PRIMARY_STATE_UNCONFIGURED, State.PRIMARY_STATE_INACTIVE, State.PRIMARY_STATE_ACTIVE}
)


class BuildOnlyError(ConfigError):
    """detector.build_only is set on a managed node (which builds its engine at configure)."""


class PeftdmlLifecycleNode(LifecycleNode, PeftdmlNode):
    """PeftdmlNode as a managed node: the constructor only declares the parameters; the work
    is set up and torn down by the lifecycle transitions (module docstring).

    Inherits PeftdmlNode's processing, diagnostics and parameter handling (the MRO puts
    LifecycleNode first, so PeftdmlNode's constructor never runs).
    """

    _publisher_class = LifecyclePublisher

    def __init__(
        self,
        *,
        context: Context | None = None,
        cli_args: Sequence[str] | None = None,
        namespace: str | None = None,
        detector_factory: Callable[[NodeConfig], Any] = _make_detector,
    ) -> None:
        LifecycleNode.__init__(
            self,
            NODE_NAME,
            context=context,
            cli_args=list(cli_args) if cli_args is not None else None,
            namespace=namespace,
        )
        self._detector_factory = detector_factory
        self._outputs_open = False
        self._io_running = False
        params.declare_values(self)  # values are checked at configure
        self._watch_parameters()

    # ---------------------------------------------------------------------------- transitions

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition("configure", self._configure)
        if result == TransitionCallbackReturn.FAILURE:
            self._release()  # a failed configure leaves the node unconfigured, holding nothing
            self.get_logger().error(
                f"{EXECUTABLE} stays unconfigured: correct the parameter (a read-only one needs "
                "a restart with the corrected parameters file) and configure again"
            )
        return result

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # The outputs first: a frame processed at once must not meet a disabled publisher.
        result = super().on_activate(state)
        if result == TransitionCallbackReturn.SUCCESS:
            result = self._transition("activate", self._activate)
        if result != TransitionCallbackReturn.SUCCESS:
            self._stop()
            super().on_deactivate(state)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # The worker ends its frame while the outputs are still enabled: that frame is published.
        result = self._transition("deactivate", self._stop)
        if result == TransitionCallbackReturn.SUCCESS:
            self.get_logger().info(f"{EXECUTABLE} inactive: not subscribed, publishing nothing")
            result = super().on_deactivate(state)
        return result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition("cleanup", self._release)
        if result == TransitionCallbackReturn.SUCCESS:
            self.get_logger().info(f"{EXECUTABLE} unconfigured: the model is released")
        return result

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition("shutdown", self._release)
        if result == TransitionCallbackReturn.SUCCESS:
            self.get_logger().info(f"{EXECUTABLE} finalized (shut down from {state.label})")
        return result

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # After an unexpected exception in a transition: hold nothing and start over from
        # unconfigured (an error here too finalizes the node).
        result = self._transition("error processing", self._release)
        if result == TransitionCallbackReturn.SUCCESS:
            self.get_logger().warning(f"{EXECUTABLE} unconfigured after an error: configure again")
        return result

    def _transition(self, name: str, action: Callable[[], None]) -> TransitionCallbackReturn:
        """Run a transition's work: FAILURE (and why) for a known error, ERROR (with the
        traceback) for any other exception. rclpy would turn an exception into ERROR without
        a word."""
        try:
            action()
        except PeftdmlError as error:
            self.get_logger().error(f"{name} failed: {error}")
            return TransitionCallbackReturn.FAILURE
        except Exception:
            self.get_logger().error(f"{name} failed unexpectedly:\n{traceback.format_exc()}")
            return TransitionCallbackReturn.ERROR
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------------ transition work

    def _configure(self) -> None:
        config = params.config_from_flat(params.flat_values(self))
        if config.build_only:
            raise BuildOnlyError(
                "detector.build_only is for peftdml_node, which builds the engine and exits; "
                "a managed node builds or loads its engine at configure: set it false"
            )
        self._config = config
        self._load(config, self._detector_factory)
        self._open_outputs()
        for publisher in self._output_publishers():
            self.add_managed_entity(publisher)  # type: ignore[arg-type]
        self._outputs_open = True
        self.get_logger().info(f"{EXECUTABLE} inactive (configured): {self._summary(config)}")

    def _activate(self) -> None:
        self._io_running = True  # set first: a partial start is undone by _stop
        self._start_io(self._config)
        self.get_logger().info(f"{EXECUTABLE} active: {self._summary(self._config)}")

    def _stop(self) -> None:
        if self._io_running:
            self._io_running = False
            self._stop_io()

    def _release(self) -> None:
        """Hold nothing: stop the work, destroy the outputs, release the detector."""
        self._stop()
        if self._outputs_open:
            self._outputs_open = False
            for publisher in self._output_publishers():
                self.destroy_lifecycle_publisher(publisher)  # type: ignore[arg-type]
        if self._detector is not None:
            self._unload()

    @property
    def state_id(self) -> int:
        """The current lifecycle state (lifecycle_msgs/msg/State ids)."""
        return int(self._state_machine.current_state[0])

    @property
    def state_label(self) -> str:
        return str(self._state_machine.current_state[1])

    def destroy_node(self) -> None:
        self._release()
        super().destroy_node()


# ----------------------------------------------------------------------------------- main()

USAGE = f"""usage: {EXECUTABLE} [{AUTOSTART_FLAG}] --ros-args --params-file PARAMS.yaml [-p N:=V]

peftdml_node as a managed (lifecycle) node, name peftdml: it starts unconfigured; configure
loads the model, activate subscribes and publishes (`ros2 lifecycle set /peftdml configure`,
then `activate`; or a lifecycle manager). {AUTOSTART_FLAG} configures and activates it at start.
Parameters, topics and outputs are peftdml_node's (`peftdml_node --help`); the package's
parameters file is {{params}}. See docs/node.md, "Managed (lifecycle) mode"."""


def _own_args(argv: Sequence[str]) -> list[str]:
    """The arguments before any --ros-args (after it, arguments belong to ROS)."""
    return list(argv)[: list(argv).index("--ros-args")] if "--ros-args" in argv else list(argv)


def _autostart(node: PeftdmlLifecycleNode) -> None:
    """Configure, then activate; a failure is logged by the transition and the node stays in
    the state it reached, for a lifecycle manager or the user to act on."""
    if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
        node.trigger_activate()
    node.get_logger().info(f"{EXECUTABLE} autostart: {node.state_label}")


def _shut_down(node: PeftdmlLifecycleNode) -> None:
    """The shutdown transition, where the node is in a state that has one (a stop signal may
    have interrupted a transition: then destroy_node releases what is left)."""
    if node.state_id in SHUTDOWN_FROM:
        node.trigger_shutdown()
    elif node.state_id != State.PRIMARY_STATE_FINALIZED:
        node.get_logger().info(
            f"{EXECUTABLE} stopped while {node.state_label}: released without the shutdown "
            "transition"
        )


def main(args: Sequence[str] | None = None) -> int:
    """Console script `peftdml_lifecycle_node` (args: like sys.argv). Signals as peftdml_node's
    main() (stop_signals.py): SIGINT and SIGTERM, repeats included, are a normal exit (0) after
    the shutdown transition; parameters that cannot be declared exit 2."""
    argv = list(sys.argv if args is None else args)
    own = _own_args(argv[1:])
    if _wants_help(argv[1:]):
        print(USAGE.format(params=params.default_params_file()))
        return 0
    unknown = [arg for arg in own if arg != AUTOSTART_FLAG]
    if unknown:
        print(f"{EXECUTABLE}: unknown argument(s) {unknown}; see --help", file=sys.stderr)
        return 2
    stop = StopSignals().install()
    node: PeftdmlLifecycleNode | None = None
    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
        executor = SingleThreadedExecutor()  # first: see node.main()
        node = PeftdmlLifecycleNode()
        # The start-up line comes once `node` is set: a signal after it reaches the clean-up.
        if AUTOSTART_FLAG in own:
            _autostart(node)  # a signal meanwhile interrupts it, as a plain node's start-up
        else:
            node.get_logger().info(
                f"{EXECUTABLE} unconfigured: configure loads the model, activate starts it "
                f"(`ros2 lifecycle set {node.get_fully_qualified_name()} configure`, or a "
                "lifecycle manager)"
            )
        executor.add_node(node)
        stop.spin(executor)  # until SIGINT or SIGTERM
    except ConfigError as error:
        print(f"{EXECUTABLE}: configuration error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # The shutdown transition and the clean-up run whatever arrives meanwhile (launch
        # forwards the terminal's Ctrl-C, then sends SIGTERM).
        stop.interrupt_main = False
        if node is not None:
            _shut_down(node)
            node.destroy_node()
        rclpy.try_shutdown()
        stop.ignore_from_now()
    return 0


if __name__ == "__main__":
    sys.exit(main())
