package io.mqvirtio.cli;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.io.IOException;
import java.io.PrintStream;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.net.InetSocketAddress;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/**
 * {@code mqvirtio serve}: a vhost-user-net backend on one socket until SIGTERM or SIGINT, which stop it in order
 * (metrics endpoint, vhost-user session and socket file, queue-pair workers, TAP queues) and exit 0.
 */
final class Serve {
    private static final Logger LOG = System.getLogger(Serve.class.getName());

    static final Set<String> VALUED = Set.of("socket-path", "queues", "tap", "mtu", "cpus", "stats-interval", "name",
            "metrics");
    static final Set<String> FLAGS = Set.of("loopback", "client", "busy-poll", "print-capabilities", "debug");

    private Serve() {}

    /** The command line, checked before anything is opened. */
    record Options(Path socket, int queues, int mtu, String tap, boolean loopback, boolean client, boolean busyPoll,
            int[] cpus, double statsEvery, String name, InetSocketAddress metrics, boolean debug) {

        static Options parse(Args a) {
            if (!a.positional().isEmpty()) {
                throw new Args.UsageException("serve takes no positional arguments, got " + a.positional());
            }
            String socket = a.string("socket-path", null);
            if (socket == null || socket.isEmpty()) {
                throw new Args.UsageException("serve needs --socket-path PATH");
            }
            int queues = a.integer("queues", 1, 1, Math.min(VirtioNet.MAX_PAIRS, TapBackend.MAX_QUEUES));
            int mtu = a.integer("mtu", 1500, 68, 65535);
            String tap = a.string("tap", null);
            boolean loopback = a.flag("loopback");
            if ((tap == null) == !loopback) {
                throw new Args.UsageException("serve needs exactly one backend: --tap NAME or --loopback");
            }
            if (tap != null) {
                String bad = TapBackend.invalidNameReason(tap);
                if (bad != null) {
                    throw new Args.UsageException("--tap: " + bad);
                }
            }
            int[] cpus = a.string("cpus", null) == null ? new int[0]
                    : a.integers("cpus", "", 0, 4095).stream().mapToInt(Integer::intValue).toArray();
            double statsEvery = a.decimal("stats-interval", 0, 0, 86400);
            Path path = Path.of(socket);
            String name = a.string("name", path.getFileName() == null ? socket : path.getFileName().toString());
            InetSocketAddress metrics = a.string("metrics", null) == null ? null
                    : MetricsServer.loopback("metrics", a.string("metrics", null));
            return new Options(path, queues, mtu, tap, loopback, a.flag("client"), a.flag("busy-poll"), cpus, statsEvery,
                    name, metrics, a.flag("debug"));
        }
    }

    static int run(Args a, PrintStream out, PrintStream err) throws InterruptedException {
        if (a.flag("print-capabilities")) {
            out.println("{\n  \"type\": \"net\"\n}");
            return 0;
        }
        Options o = Options.parse(a);
        Logging.setup(o.debug());

        Running r = new Running();
        // SIGTERM/SIGINT only set the latch below, even during start-up; the hook covers the other ways out
        // (SIGHUP, an exit elsewhere) and is a no-op after an orderly stop.
        Runtime.getRuntime().addShutdownHook(Thread.ofPlatform().name("mqvirtio-shutdown").unstarted(() -> r.stop("exit")));
        if (!Signals.onTermination(r::requestStop)) {
            LOG.log(Level.WARNING, "cannot handle SIGTERM/SIGINT (sun.misc.Signal unavailable): they exit with 128+signal");
        }
        try {
            r.start(o);
        } catch (RuntimeException | IOException e) {
            r.stop("failed start-up");
            err.println("mqvirtio: serve: " + message(e));
            return 1;
        }
        long every = o.statsEvery() > 0 ? (long) (o.statsEvery() * 1000) : TimeUnit.HOURS.toMillis(1);
        while (!r.stopRequested.await(every, TimeUnit.MILLISECONDS)) {
            if (o.statsEvery() > 0) {
                Stats.printTotals(new Stats.Sample(0, List.of(r.snapshot())), out);
            }
        }
        LOG.log(Level.INFO, "SIG{0}: stopping", r.signal.get());
        r.stop("SIG" + r.signal.get());
        return 0;
    }

    /** An error for the user, in one line. */
    static String message(Throwable e) {
        String m = e.getMessage();
        return m == null || m.isBlank() ? e.getClass().getSimpleName() : m;
    }

    /** What serve has started, stopped once in reverse order whoever asks first (main thread or shutdown hook). */
    static final class Running {
        final CountDownLatch stopRequested = new CountDownLatch(1);
        final AtomicReference<String> signal = new AtomicReference<>();
        private NetDevice device;
        private VhostUserServer server;
        private MetricsServer metrics;
        private String socket;
        private String backendName;
        private boolean stopped;

        void requestStop(String sig) {
            if (!signal.compareAndSet(null, sig)) {
                // a second signal while stopping: the user insists (or stopping hangs); leave at once
                System.err.println("mqvirtio: SIG" + sig + " again while stopping: exiting now");
                Runtime.getRuntime().halt(1);
            }
            stopRequested.countDown();
        }

        void start(Options o) throws IOException {
            PacketBackend backend;
            if (o.loopback()) {
                backend = new LoopbackBackend(o.queues(), o.mtu());
            } else {
                backend = TapBackend.open(o.tap(), o.queues());
            }
            synchronized (this) {
                backendName = backend.describe();
                socket = o.socket().toAbsolutePath().toString();
                try {
                    device = new NetDevice(new NetDevice.Config(o.name(), o.queues(), o.mtu(), o.busyPoll(), o.cpus()),
                            backend);
                } catch (RuntimeException e) {
                    backend.close();
                    throw e;
                }
            }
            VhostUserServer s;
            try {
                s = o.client() ? VhostUserServer.connect(o.socket(), device) : VhostUserServer.listen(o.socket(), device);
            } catch (RuntimeException e) {
                String m = message(e);
                throw m.contains(o.socket().toString()) ? e : new IllegalStateException(o.socket() + ": " + m, e);
            }
            synchronized (this) {
                server = s;
                if (stopped) {
                    s.close();
                    return;
                }
            }
            if (o.client()) {
                LOG.log(Level.INFO, "connecting to {0} (and again after each session)", o.socket());
            }
            if (o.metrics() != null) {
                VhostUserServer srv = s;
                MetricsServer m;
                try {
                    m = MetricsServer.start(o.metrics(),
                            List.of(new MetricsServer.Source(device, socket, backendName, srv::hasSession)));
                } catch (IOException e) {
                    throw new IOException("metrics endpoint on " + MetricsServer.hostPort(o.metrics()) + ": "
                            + message(e), e);
                }
                synchronized (this) {
                    metrics = m;
                    if (stopped) {
                        m.close();
                    }
                }
            }
        }

        synchronized DeviceStats snapshot() {
            return DeviceStats.of(device, socket, backendName, server != null && server.hasSession());
        }

        /** Closes what was started, last first; idempotent. */
        synchronized void stop(String why) {
            if (stopped) {
                return;
            }
            stopped = true;
            if (metrics != null) {
                metrics.close();
            }
            if (server != null) {
                server.close(); // ends the session and removes the socket file we listened on
            }
            if (device != null) {
                device.close(); // stops the workers, then closes the backend (TAP queues)
                LOG.log(Level.INFO, "{0}: stopped ({1})", device.config().name(), why);
            }
            flushLogs();
        }

        private static void flushLogs() {
            for (var h : java.util.logging.Logger.getLogger("").getHandlers()) {
                h.flush();
            }
        }
    }
}
