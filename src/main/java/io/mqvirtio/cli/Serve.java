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
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/**
 * {@code mqvirtio serve}: vhost-user-net backends, one device per VM (each on its own socket, with its own workers
 * and backend), until SIGTERM or SIGINT, which stop them in order (metrics endpoint, vhost-user sessions and
 * socket files, queue-pair workers, TAP queues) and exit 0. One VM's device failing or misbehaving touches no other.
 */
final class Serve {
    private static final Logger LOG = System.getLogger(Serve.class.getName());

    static final Set<String> VALUED = Set.of("socket-path", "fd", "queues", "tap", "mtu", "cpus", "stats-interval", "name",
            "metrics", "vm", "socket-group", "poll-us", "max-memory", "max-total-memory");
    static final Set<String> FLAGS = Set.of("loopback", "client", "busy-poll", "print-capabilities", "debug");
    /** The options that describe one VM's device: on the command line directly, or inside each --vm. */
    private static final Set<String> VM_OPTIONS = Set.of("socket-path", "fd", "queues", "tap", "mtu", "cpus", "name",
            "loopback", "client");
    /** {@link Vm#fd()}: the VM listens on its socket path (or connects to it). */
    static final int NO_FD = -1;
    /** {@link Vm#fd()}: neither a path nor a descriptor was given; systemd's next passed socket is the VM's. */
    static final int FROM_SYSTEMD = -2;
    /** What a VM waiting for systemd's socket is called until it has it. */
    private static final String SYSTEMD_NAME = "systemd";

    private Serve() {}

    /**
     * One VM's device: its socket (a path; or, with {@code fd >= 0}, an inherited listening socket, and then
     * {@code socket} only names it, "fd:N" or systemd's name for it), its queue pairs and its backend.
     */
    record Vm(Path socket, int fd, int queues, int mtu, String tap, boolean loopback, boolean client, boolean busyPoll,
            int[] cpus, String name, int pollMicros, long maxMemory) {

        /** From the command line's own options (one VM) or from a --vm spec turned into arguments. */
        static Vm parse(Args a, boolean busyPollDefault, int pollDefault, long maxMemoryDefault) {
            String socket = a.string("socket-path", null);
            int fd = a.string("fd", null) == null ? NO_FD : a.integer("fd", 0, 0, Integer.MAX_VALUE);
            if (socket != null && socket.isEmpty()) {
                throw new Args.UsageException("--socket-path needs a path");
            }
            if (socket != null && fd != NO_FD) {
                throw new Args.UsageException("--fd and --socket-path are incompatible (the socket is one or the other)");
            }
            if (fd != NO_FD && a.flag("client")) {
                throw new Args.UsageException("--fd is a listening socket: it does not go with --client");
            }
            if (socket == null && fd == NO_FD) {
                fd = FROM_SYSTEMD;
                if (a.flag("client")) {
                    throw new Args.UsageException("--client needs --socket-path PATH (the frontend's socket)");
                }
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
            Path path = Path.of(socket != null ? socket : fd >= 0 ? "fd:" + fd : SYSTEMD_NAME);
            String name = a.string("name", path.getFileName() == null ? socket : path.getFileName().toString());
            int poll = a.integer("poll-us", pollDefault, 0, 1_000_000);
            long maxMemory = a.string("max-memory", null) == null ? maxMemoryDefault
                    : size("max-memory", a.string("max-memory", null));
            return new Vm(path, fd, queues, mtu, tap, loopback, a.flag("client"), busyPollDefault || a.flag("busy-poll"),
                    cpus, name, poll, maxMemory);
        }

        /** This VM on a socket systemd passed (named after it, unless the VM was given a name of its own). */
        Vm onPassed(Systemd.Passed p) {
            String n = name.equals(SYSTEMD_NAME) ? p.name() : name;
            return new Vm(Path.of(p.name()), p.fd(), queues, mtu, tap, loopback, client, busyPoll, cpus, n, pollMicros,
                    maxMemory);
        }

        /**
         * A --vm spec, {@code socket-path=P,queues=N,tap=T} or {@code ...,loopback,client}: the same keys as the
         * single-VM options, separated by commas (cpus are separated by colons inside it: cpus=0:1).
         */
        static Vm parseSpec(String spec, boolean busyPoll, int pollDefault, long maxMemoryDefault) {
            List<String> argv = new ArrayList<>();
            for (String part : spec.split(",")) {
                if (part.isBlank()) {
                    continue;
                }
                int eq = part.indexOf('=');
                String key = eq < 0 ? part : part.substring(0, eq);
                if (!VM_OPTIONS.contains(key) && !key.equals("busy-poll") && !key.equals("poll-us")
                        && !key.equals("max-memory")) {
                    throw new Args.UsageException("--vm: unknown key '" + key + "' (keys: socket-path, fd, queues, tap, loopback, "
                            + "mtu, cpus, name, client, busy-poll, poll-us, max-memory)");
                }
                argv.add("--" + (eq < 0 ? key : key + "=" + part.substring(eq + 1).replace(':', ',')));
            }
            try {
                return parse(new Args(argv.toArray(new String[0]), VALUED, FLAGS), busyPoll, pollDefault, maxMemoryDefault);
            } catch (Args.UsageException e) {
                throw new Args.UsageException("--vm " + spec + ": " + e.getMessage());
            }
        }
    }

    /**
     * A size in bytes: digits with an optional binary unit, {@code 512M}, {@code 16G}, {@code 1T} (K, M, G, T, P; also
     * KiB, MiB... and KB, MB... meaning the same).
     */
    static long size(String option, String v) {
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("(?i)(\\d+)\\s*([kmgtp]?)(i?b)?").matcher(v.trim());
        if (!m.matches()) {
            throw new Args.UsageException("--" + option + ": '" + v + "' is not a size (e.g. 512M, 16G, 1T)");
        }
        int shift = switch (m.group(2).toLowerCase(java.util.Locale.ROOT)) {
            case "k" -> 10;
            case "m" -> 20;
            case "g" -> 30;
            case "t" -> 40;
            case "p" -> 50;
            default -> 0;
        };
        try {
            long n = Long.parseLong(m.group(1));
            if (n <= 0 || n > (Long.MAX_VALUE >> shift)) {
                throw new NumberFormatException();
            }
            return n << shift;
        } catch (NumberFormatException e) {
            throw new Args.UsageException("--" + option + ": '" + v + "' is not a size between 1 byte and 8 EiB");
        }
    }

    /** The command line, checked before anything is opened. */
    record Options(List<Vm> vms, double statsEvery, InetSocketAddress metrics, boolean debug, String socketGroup,
            long maxTotalMemory) {

        static Options parse(Args a) {
            if (!a.positional().isEmpty()) {
                throw new Args.UsageException("serve takes no positional arguments, got " + a.positional());
            }
            List<Vm> vms = new ArrayList<>();
            io.mqvirtio.memory.MemoryBudget defaults = io.mqvirtio.memory.MemoryBudget.defaults();
            long maxMemory = a.string("max-memory", null) == null ? defaults.perVm() : size("max-memory", a.string("max-memory", null));
            long maxTotal = a.string("max-total-memory", null) == null ? Math.max(defaults.total(), maxMemory)
                    : size("max-total-memory", a.string("max-total-memory", null));
            if (a.strings("vm").isEmpty()) {
                vms.add(Vm.parse(a, false, 0, maxMemory));
            } else {
                for (String o : VM_OPTIONS) {
                    if (a.flag(o)) {
                        throw new Args.UsageException("--" + o + " belongs inside --vm when --vm is used");
                    }
                }
                for (String spec : a.strings("vm")) {
                    vms.add(Vm.parseSpec(spec, a.flag("busy-poll"), a.integer("poll-us", 0, 0, 1_000_000), maxMemory));
                }
            }
            List<Systemd.Passed> passed = new ArrayList<>(Systemd.listenFds(System.getenv(), ProcessHandle.current().pid()));
            int wanted = (int) vms.stream().filter(v -> v.fd() == FROM_SYSTEMD).count();
            if (wanted > 0 && passed.size() < wanted) {
                throw new Args.UsageException(passed.isEmpty()
                        ? "serve needs --socket-path PATH or --fd N (or --vm socket-path=PATH,...), or sockets from systemd (LISTEN_FDS)"
                        : wanted + " VMs without a socket, but systemd passed " + passed.size() + " (LISTEN_FDS)");
            }
            for (int i = 0; i < vms.size(); i++) {
                Vm v = vms.get(i);
                if (v.fd() == FROM_SYSTEMD) {
                    vms.set(i, v.onPassed(passed.removeFirst()));
                }
            }
            Set<Path> sockets = new HashSet<>();
            Set<String> taps = new HashSet<>();
            Set<String> names = new HashSet<>();
            for (Vm v : vms) {
                if (!sockets.add(v.fd() >= 0 ? Path.of("fd:" + v.fd()) : v.socket().toAbsolutePath().normalize())) {
                    throw new Args.UsageException("socket " + v.socket() + " is given to two VMs");
                }
                if (v.tap() != null && !taps.add(v.tap())) {
                    throw new Args.UsageException("TAP device " + v.tap() + " is given to two VMs");
                }
                if (!names.add(v.name())) {
                    throw new Args.UsageException("two VMs are named " + v.name() + " (set name=...)");
                }
            }
            double statsEvery = a.decimal("stats-interval", 0, 0, 86400);
            InetSocketAddress metrics = a.string("metrics", null) == null ? null
                    : MetricsServer.loopback("metrics", a.string("metrics", null));
            String group = a.string("socket-group", null);
            if (group != null && group.isBlank()) {
                throw new Args.UsageException("--socket-group needs a group name");
            }
            return new Options(List.copyOf(vms), statsEvery, metrics, a.flag("debug"), group, maxTotal);
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
        Systemd.notify("READY=1\nSTATUS=serving " + o.vms().size() + " VM" + (o.vms().size() == 1 ? "" : "s")
                + "\nMAINPID=" + ProcessHandle.current().pid());
        long every = o.statsEvery() > 0 ? (long) (o.statsEvery() * 1000) : TimeUnit.HOURS.toMillis(1);
        while (!r.stopRequested.await(every, TimeUnit.MILLISECONDS)) {
            if (o.statsEvery() > 0) {
                Stats.printTotals(new Stats.Sample(0, r.snapshot()), out);
            }
        }
        LOG.log(Level.INFO, "SIG{0}: stopping", r.signal.get());
        Systemd.notify("STOPPING=1");
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
        private final List<Started> started = new ArrayList<>();
        private MetricsServer metrics;
        private boolean stopped;

        /** One VM's running parts. */
        private record Started(NetDevice device, VhostUserServer server, String socket, String backendName) {}

        void requestStop(String sig) {
            if (!signal.compareAndSet(null, sig)) {
                // a second signal while stopping: the user insists (or stopping hangs); leave at once
                System.err.println("mqvirtio: SIG" + sig + " again while stopping: exiting now");
                Runtime.getRuntime().halt(1);
            }
            stopRequested.countDown();
        }

        void start(Options o) throws IOException {
            if (o.socketGroup() != null) {
                try {
                    java.nio.file.FileSystems.getDefault().getUserPrincipalLookupService()
                            .lookupPrincipalByGroupName(o.socketGroup());
                } catch (IOException e) {
                    throw new IOException("--socket-group: no group named " + o.socketGroup(), e);
                }
            }
            // One budget for the whole process: the VMs' limits differ, their total is shared.
            io.mqvirtio.memory.MemoryBudget budget = new io.mqvirtio.memory.MemoryBudget(
                    o.vms().stream().mapToLong(Vm::maxMemory).max().orElse(1), o.maxTotalMemory());
            for (Vm vm : o.vms()) {
                startVm(vm, o.socketGroup(), budget.withPerVm(vm.maxMemory()));
            }
            if (o.metrics() != null) {
                List<MetricsServer.Source> sources = new ArrayList<>();
                synchronized (this) {
                    for (Started s : started) {
                        sources.add(new MetricsServer.Source(s.device(), s.socket(), s.backendName(), s.server()::hasSession));
                    }
                }
                MetricsServer m;
                try {
                    m = MetricsServer.start(o.metrics(), sources);
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

        private void startVm(Vm vm, String group, io.mqvirtio.memory.MemoryBudget memory) throws IOException {
            PacketBackend backend = vm.loopback() ? new LoopbackBackend(vm.queues(), vm.mtu()) : TapBackend.open(vm.tap(), vm.queues());
            NetDevice device;
            try {
                device = new NetDevice(new NetDevice.Config(vm.name(), vm.queues(), vm.mtu(), vm.busyPoll(), vm.cpus(),
                        vm.pollMicros()), backend);
            } catch (RuntimeException e) {
                backend.close();
                throw e;
            }
            VhostUserServer s;
            try {
                if (vm.fd() >= 0) {
                    s = VhostUserServer.adopt(io.mqvirtio.linux.UnixSocket.adoptListening(vm.fd()), vm.socket().toString(),
                            device, new VhostUserServer.Options(null, memory));
                } else {
                    s = vm.client() ? VhostUserServer.connect(vm.socket(), device, new VhostUserServer.Options(null, memory))
                            : VhostUserServer.listen(vm.socket(), device, new VhostUserServer.Options(group, memory));
                }
            } catch (RuntimeException e) {
                device.close();
                String m = message(e);
                throw m.contains(vm.socket().toString()) ? e : new IllegalStateException(vm.socket() + ": " + m, e);
            }
            synchronized (this) {
                started.add(new Started(device, s, vm.fd() >= 0 ? vm.socket().toString()
                        : vm.socket().toAbsolutePath().toString(), backend.describe()));
                if (stopped) {
                    s.close();
                    device.close();
                    return;
                }
            }
            if (vm.client()) {
                LOG.log(Level.INFO, "connecting to {0} (and again after each session)", vm.socket());
            }
        }

        synchronized List<DeviceStats> snapshot() {
            List<DeviceStats> l = new ArrayList<>();
            for (Started s : started) {
                l.add(DeviceStats.of(s.device(), s.socket(), s.backendName(), s.server().hasSession()));
            }
            return l;
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
            for (int i = started.size() - 1; i >= 0; i--) {
                Started s = started.get(i);
                s.server().close(); // ends the session and removes the socket file we listened on
                s.device().close(); // stops the workers, then closes the backend (TAP queues)
                LOG.log(Level.INFO, "{0}: stopped ({1})", s.device().config().name(), why);
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
