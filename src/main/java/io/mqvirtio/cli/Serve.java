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
import picocli.CommandLine.Option;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/**
 * {@code mqvirtio serve}: vhost-user-net backends, one device per VM (each on its own socket, with its own workers
 * and backend), until SIGTERM or SIGINT, which stop them (metrics endpoint, then every VM at once: its vhost-user
 * session and socket file, queue-pair workers, TAP queues) within a bound, and exit 0. One VM's device failing or misbehaving touches no other.
 */
final class Serve {
    private static final Logger LOG = System.getLogger(Serve.class.getName());

    /** The options that describe one VM's device: on the command line directly, or inside each --vm. */
    private static final List<String> VM_OPTIONS = List.of("--socket-path", "--fd", "--queues", "--tap", "--mtu", "--cpus",
            "--name", "--loopback", "--client", "--tap-tx");
    /** {@link Vm#fd()}: the VM listens on its socket path (or connects to it). */
    static final int NO_FD = -1;
    /** {@link Vm#fd()}: neither a path nor a descriptor was given; systemd's next passed socket is the VM's. */
    static final int FROM_SYSTEMD = -2;
    /** The longest path connect(2) takes for an AF_UNIX socket: sun_path's 108 bytes, less the terminating NUL. */
    static final int MAX_SOCKET_PATH = 107;
    /** What a VM waiting for systemd's socket is called until it has it. */
    private static final String SYSTEMD_NAME = "systemd";

    private Serve() {}

    /**
     * One VM's device: its socket (a path; or, with {@code fd >= 0}, an inherited listening socket, and then
     * {@code socket} only names it, "fd:N" or systemd's name for it), its queue pairs and its backend.
     */
    record Vm(Path socket, int fd, int queues, int mtu, String tap, boolean loopback, boolean client, boolean busyPoll,
            int[] cpus, String name, int pollMicros, long maxMemory, Path capture, TapBackend.TxMethod tapTx,
            String socketGroup) {

        /**
         * The name goes into capture file names (DIR/NAME-qpN.pcapng), log lines and metrics labels: one that names
         * another directory ('/', "..") or hides in a terminal (control characters) is refused, from --name and from
         * systemd's FileDescriptorName= alike.
         */
        Vm {
            String why = name == null || name.isEmpty() ? "is empty"
                    : name.length() > 128 ? "is longer than 128 characters"
                    : name.equals(".") || name.equals("..") || name.indexOf('/') >= 0 ? "would name a directory in file names"
                    : name.chars().anyMatch(c -> c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0))
                            ? "has control characters" : null;
            if (why != null) {
                throw new UsageException("the device name " + Json.write(String.valueOf(name)) + " " + why
                        + " (set one with --name)");
            }
        }

        /** From the command line's own options (one VM) or from a --vm spec turned into arguments. */
        static Vm from(VmOptions a, boolean busyPollDefault, int pollDefault, long maxMemoryDefault,
                       String captureDefault, String groupDefault) {
            String socket = a.socketPath;
            int fd = a.fd == null ? NO_FD : Check.range("--fd", a.fd, 0, Integer.MAX_VALUE);
            if (socket != null && socket.isEmpty()) {
                throw new UsageException("--socket-path needs a path");
            }
            int bytes = socket == null ? 0 : socket.getBytes(java.nio.charset.StandardCharsets.UTF_8).length;
            if (bytes > MAX_SOCKET_PATH) {
                // serve binds under a short private name and links the path in, so listening "worked"; but nobody
                // can connect(2) by it (QEMU says its path is too long), and --client retried it silently for good
                throw new UsageException("--socket-path " + socket + " is " + bytes + " bytes; an AF_UNIX socket is "
                        + "reached by a path of at most " + MAX_SOCKET_PATH + " (sun_path): choose a shorter one");
            }
            if (socket != null && fd != NO_FD) {
                throw new UsageException("--fd and --socket-path are incompatible (the socket is one or the other)");
            }
            if (fd != NO_FD && a.client) {
                throw new UsageException("--fd is a listening socket: it does not go with --client");
            }
            if (socket == null && fd == NO_FD) {
                fd = FROM_SYSTEMD;
                if (a.client) {
                    throw new UsageException("--client needs --socket-path PATH (the frontend's socket)");
                }
            }
            int queues = a.queues == null ? 1 : Check.range("--queues", a.queues, 1, Math.min(VirtioNet.MAX_PAIRS,
                    TapBackend.MAX_QUEUES));
            int mtu = a.mtu == null ? 1500 : Check.range("--mtu", a.mtu, 68, 65535);
            String tap = a.tap;
            boolean loopback = a.loopback;
            if ((tap == null) == !loopback) {
                throw new UsageException("serve needs exactly one backend: --tap NAME or --loopback");
            }
            if (tap != null) {
                String bad = TapBackend.invalidNameReason(tap);
                if (bad != null) {
                    throw new UsageException("--tap: " + bad);
                }
            }
            int[] cpus = a.cpus == null ? new int[0]
                    : Check.each("--cpus", a.cpus, 0, 4095).stream().mapToInt(Integer::intValue).toArray();
            Path path = Path.of(socket != null ? socket : fd >= 0 ? "fd:" + fd : SYSTEMD_NAME);
            String name = a.name != null ? a.name : path.getFileName() == null ? socket : path.getFileName().toString();
            int poll = a.pollMicros == null ? pollDefault : Check.range("--poll-us", a.pollMicros, 0, 1_000_000);
            long maxMemory = a.maxMemory == null ? maxMemoryDefault : size("max-memory", a.maxMemory);
            String dir = a.capture != null ? a.capture : captureDefault;
            Path capture = dir == null ? null : Path.of(dir);
            if (dir != null && dir.isBlank()) {
                throw new UsageException("--capture needs a directory");
            }
            TapBackend.TxMethod tapTx = tapTx(a.tapTx);
            String group = a.socketGroup != null ? a.socketGroup : groupDefault;
            if (group != null && group.isBlank()) {
                throw new UsageException("--socket-group needs a group name");
            }
            if (a.tapTx != null && tap == null) {
                throw new UsageException("--tap-tx goes with --tap");
            }
            return new Vm(path, fd, queues, mtu, tap, loopback, a.client, busyPollDefault || a.busyPoll, cpus, name, poll,
                    maxMemory, capture, tapTx, group);
        }

        static TapBackend.TxMethod tapTx(String s) {
            if (s == null) {
                return TapBackend.TxMethod.AUTO;
            }
            return switch (s.toLowerCase(java.util.Locale.ROOT)) {
                case "auto" -> TapBackend.TxMethod.AUTO;
                case "io_uring", "io-uring", "uring" -> TapBackend.TxMethod.IO_URING;
                case "writev" -> TapBackend.TxMethod.WRITEV;
                default -> throw new UsageException("--tap-tx is auto, io_uring or writev, not '" + s + "'");
            };
        }

        /** This VM on a socket systemd passed (named after it, unless the VM was given a name of its own). */
        Vm onPassed(Systemd.Passed p) {
            String n = name.equals(SYSTEMD_NAME) ? p.name() : name;
            return new Vm(Path.of(p.name()), p.fd(), queues, mtu, tap, loopback, client, busyPoll, cpus, n, pollMicros,
                    maxMemory, capture, tapTx, socketGroup);
        }

        /**
         * A --vm spec, {@code socket-path=P,queues=N,tap=T} or {@code ...,loopback,client}: the same keys as the
         * single-VM options, separated by commas (cpus are separated by colons inside it: cpus=0:1).
         */
        static Vm parseSpec(String spec, boolean busyPoll, int pollDefault, long maxMemoryDefault, String captureDefault,
                            String groupDefault) {
            List<String> argv = new ArrayList<>();
            for (String part : spec.split(",")) {
                if (part.isBlank()) {
                    continue;
                }
                int eq = part.indexOf('=');
                String key = eq < 0 ? part : part.substring(0, eq);
                if (key.startsWith("-")) {
                    throw new UsageException("--vm " + spec + ": keys are written without dashes: '" + key + "'");
                }
                argv.add("--" + (eq < 0 ? key : key + "=" + part.substring(eq + 1).replace(':', ',')));
            }
            VmSpec parsed = new VmSpec();
            picocli.CommandLine cl = new picocli.CommandLine(parsed);
            cl.setOverwrittenOptionsAllowed(true);
            try {
                cl.parseArgs(argv.toArray(new String[0]));
                return from(parsed.options, busyPoll, pollDefault, maxMemoryDefault, captureDefault, groupDefault);
            } catch (picocli.CommandLine.UnmatchedArgumentException e) {
                List<String> keys = cl.getCommandSpec().options().stream().map(o -> o.longestName().substring(2)).toList();
                throw new UsageException("--vm " + spec + ": unknown key '" + e.getUnmatched().get(0).replaceFirst("^--", "")
                        .replaceFirst("=.*", "") + "' (keys: " + String.join(", ", keys) + ")");
            } catch (picocli.CommandLine.ParameterException | UsageException e) {
                throw new UsageException("--vm " + spec + ": " + e.getMessage());
            }
        }
    }

    /**
     * The options of one VM's device, as {@code serve}'s own (one VM) and as the keys of each {@code --vm} spec
     * (parsed by the same definitions: {@link VmSpec}). Unset is null: the defaults depend on where they were given.
     */
    static final class VmOptions {
        @Option(names = "--socket-path", paramLabel = "P", order = 1,
                description = "the vhost-user socket (listened on; with --client, connected to)")
        String socketPath;

        @Option(names = "--fd", paramLabel = "N", order = 2, description = "listen on descriptor N, a listening AF_UNIX "
                + "socket a supervisor passed (instead of --socket-path; fd=N in a --vm). With neither, the sockets "
                + "systemd passes (socket activation: LISTEN_FDS) are the VMs', in order; serve tells systemd when it "
                + "is ready and when it stops (NOTIFY_SOCKET, Type=notify)")
        Integer fd;

        @Option(names = "--queues", paramLabel = "N", order = 3,
                description = "queue pairs (default 1); QEMU's queues= must not exceed it")
        Integer queues;

        @Option(names = "--tap", paramLabel = "NAME", order = 4, description = "multiqueue TAP device as the host side: "
                + "an existing one is used and kept; one that does not exist is created, and removed when serve exits")
        String tap;

        @Option(names = "--loopback", order = 5, description = "frames a queue pair sends come back on its RX")
        boolean loopback;

        @Option(names = "--mtu", paramLabel = "N", order = 6, description = "MTU offered to the guest (default 1500)")
        Integer mtu;

        @Option(names = "--client", order = 7,
                description = "connect to a frontend that listens (QEMU server=on) and reconnect")
        boolean client;

        @Option(names = "--busy-poll", order = 8, description = "workers poll their rings instead of sleeping on kicks")
        boolean busyPoll;

        @Option(names = "--poll-us", paramLabel = "N", order = 9, description = "without --busy-poll: after frames "
                + "moved, a worker polls N microseconds more before it sleeps on kicks again (fewer kicks and wake-ups "
                + "for steady traffic; vhost-net's busyloop_timeout); default 0")
        Integer pollMicros;

        @Option(names = "--cpus", paramLabel = "LIST", split = ",", hideParamSyntax = true, order = 10,
                description = "pin queue pair i's worker to LIST[i mod length] (cpus=0:1 inside a --vm)")
        List<Integer> cpus;

        @Option(names = "--name", paramLabel = "NAME", order = 11,
                description = "the device's name in logs and metrics (default: the socket's file name)")
        String name;

        @Option(names = "--max-memory", paramLabel = "SIZE", order = 12, description = "the most guest memory one VM "
                + "may share with serve (512M, 16G, 1T; also max-memory= in a --vm); default: the host's memory")
        String maxMemory;

        @Option(names = "--capture", paramLabel = "DIR", order = 13, description = "write the frames each queue pair "
                + "moves, both directions, to DIR/NAME-qpN.pcapng (Wireshark, tshark; created 0600; the directory is "
                + "made 0700 if missing, and refused if another user may change it); capture=DIR in a --vm, or beside "
                + "--vm for every VM")
        String capture;

        @Option(names = "--tap-tx", paramLabel = "HOW", order = 14, description = "how frames go into the TAP: "
                + "io_uring (a burst's frames, copied into a registered buffer, in one io_uring_enter), writev (one "
                + "system call per frame), or auto (the default: io_uring if a TAP write through it completes inline "
                + "here, else writev; the log says which, and the metrics per queue: mqvirtio_queue_io_info)")
        String tapTx;

        @Option(names = "--socket-group", paramLabel = "G", order = 15, description = "the listened socket belongs to "
                + "group G and its members may connect (0660); without it only the owner may (0600). socket-group=G in a "
                + "--vm gives that VM's socket its own group (its QEMU's user's, say), so that another VM's QEMU cannot "
                + "take it; beside --vm, every VM's default")
        String socketGroup;
    }

    /** One {@code --vm} spec's keys, parsed as options by {@link VmOptions}' definitions. */
    @picocli.CommandLine.Command(name = "--vm")
    static final class VmSpec {
        @picocli.CommandLine.Mixin
        VmOptions options = new VmOptions();
    }

    /**
     * A size in bytes: digits with an optional binary unit, {@code 512M}, {@code 16G}, {@code 1T} (K, M, G, T, P; also
     * KiB, MiB... and KB, MB... meaning the same).
     */
    static long size(String option, String v) {
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("(?i)(\\d+)\\s*([kmgtp]?)(i?b)?").matcher(v.trim());
        if (!m.matches()) {
            throw new UsageException("--" + option + ": '" + v + "' is not a size (e.g. 512M, 16G, 1T)");
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
            throw new UsageException("--" + option + ": '" + v + "' is not a size between 1 byte and 8 EiB");
        }
    }

    /** The command line, checked before anything is opened. */
    /**
     * What serve was told to do. {@code unusedPassed}: sockets systemd passed that no VM takes (more than the VMs
     * without a socket, or all of them where every VM has its own); serve closes them at start.
     */
    record Options(List<Vm> vms, double statsEvery, InetSocketAddress metrics, boolean metricsRemote, boolean debug,
            int captureSnaplen, long captureMaxBytes, long maxTotalMemory, List<Systemd.Passed> unusedPassed) {

        static Options parse(Command a) {
            List<Vm> vms = new ArrayList<>();
            io.mqvirtio.memory.MemoryBudget defaults = io.mqvirtio.memory.MemoryBudget.defaults();
            long maxMemory = a.vm.maxMemory == null ? defaults.perVm() : size("max-memory", a.vm.maxMemory);
            long maxTotal = a.maxTotalMemory == null ? Math.max(defaults.total(), maxMemory)
                    : size("max-total-memory", a.maxTotalMemory);
            if (a.vms.isEmpty()) {
                vms.add(Vm.from(a.vm, false, 0, maxMemory, null, null));
            } else {
                for (String o : VM_OPTIONS) {
                    if (a.spec.commandLine().getParseResult().hasMatchedOption(o)) {
                        throw new UsageException(o + " belongs inside --vm when --vm is used");
                    }
                }
                int poll = a.vm.pollMicros == null ? 0 : Check.range("--poll-us", a.vm.pollMicros, 0, 1_000_000);
                for (String spec : a.vms) {
                    // busy-poll, poll-us, max-memory, capture and socket-group given beside the specs are every VM's
                    // defaults
                    vms.add(Vm.parseSpec(spec, a.vm.busyPoll, poll, maxMemory, a.vm.capture, a.vm.socketGroup));
                }
            }
            List<Systemd.Passed> passed = new ArrayList<>(Systemd.listenFds(System.getenv(), ProcessHandle.current().pid()));
            int wanted = (int) vms.stream().filter(v -> v.fd() == FROM_SYSTEMD).count();
            if (wanted > 0 && passed.size() < wanted) {
                throw new UsageException(passed.isEmpty()
                        ? "serve needs --socket-path PATH or --fd N (or --vm socket-path=PATH,...), or sockets from systemd (LISTEN_FDS)"
                        : wanted + " VMs without a socket, but systemd passed " + passed.size() + " (LISTEN_FDS)");
            }
            for (int i = 0; i < vms.size(); i++) {
                Vm v = vms.get(i);
                if (v.fd() == FROM_SYSTEMD) {
                    vms.set(i, v.onPassed(passed.removeFirst()));
                }
            }
            // a passed socket that a VM names itself (--fd 3, fd=3 in a --vm) is that VM's, not unused
            passed.removeIf(p -> vms.stream().anyMatch(v -> v.fd() == p.fd()));
            Set<Path> sockets = new HashSet<>();
            Set<String> taps = new HashSet<>();
            Set<String> names = new HashSet<>();
            for (Vm v : vms) {
                // an inherited socket by what it is ("socket:[inode]"): one socket passed at two descriptors (dup'ed)
                // would have both VMs accept on it, each VM's frontend getting either device
                String what = v.fd() >= 0 ? Systemd.whatIs(v.fd()) : null;
                if (!sockets.add(v.fd() < 0 ? v.socket().toAbsolutePath().normalize()
                        : Path.of(what != null && what.startsWith("socket:") ? what : "fd:" + v.fd()))) {
                    throw new UsageException("socket " + v.socket() + " is given to two VMs");
                }
                // a pattern (mqv%d) is the kernel's to fill, with a name free at the time: each VM gets its own
                // device (the check at start, by the name the kernel gave, refuses one that another VM holds)
                if (v.tap() != null && !v.tap().contains("%") && !taps.add(v.tap())) {
                    throw new UsageException("TAP device " + v.tap() + " is given to two VMs");
                }
                if (a.maxTotalMemory != null && v.maxMemory() > maxTotal && v.maxMemory() != defaults.perVm()) {
                    // (a VM's limit left at its default, the host's memory, is simply capped by the total)
                    throw new UsageException("--max-total-memory " + a.maxTotalMemory + " is below the max-memory of VM "
                            + v.name() + " (" + v.maxMemory() + " bytes): that VM could never share what its own "
                            + "limit allows");
                }
                if (!names.add(v.name())) {
                    throw new UsageException("two VMs are named " + v.name() + " (set name=...)");
                }
            }
            double statsEvery = a.statsEvery;
            // 0 is off; an interval under a millisecond was a wait of 0 ms, so the main thread printed in a loop (a
            // spin): the shortest is stats --watch's
            if (statsEvery != 0 && !(statsEvery >= 0.1 && statsEvery <= 86400)) {
                throw new UsageException("--stats-interval must be 0 (off) or in 0.1..86400, got " + a.statsEvery);
            }
            if (a.metricsRemote && a.metrics == null) {
                throw new UsageException("--metrics-remote needs --metrics ADDR:PORT");
            }
            InetSocketAddress metrics = a.metrics == null ? null : a.metricsRemote
                    ? MetricsServer.address("metrics", a.metrics) : MetricsServer.loopback("metrics", a.metrics);
            int snaplen = Check.range("--capture-snaplen", a.captureSnaplen, 64, io.mqvirtio.capture.QueueCapture.DEFAULT_SNAPLEN);
            long captureMax = size("capture-max-size", a.captureMaxSize);
            return new Options(List.copyOf(vms), statsEvery, metrics, a.metricsRemote, a.debug, snaplen, captureMax,
                    maxTotal, List.copyOf(passed));
        }
    }

    @picocli.CommandLine.Command(name = "serve", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
            sortOptions = false,
            description = {"A vhost-user-net backend: QEMU or DPDK's virtio-user connect to it. One device per VM, each "
                    + "with its own socket, workers and backend. SIGTERM or SIGINT stops it cleanly (socket files "
                    + "removed, TAP queues closed, a TAP device it created gone) with exit status 0."},
            footerHeading = "%nExamples:%n",
            footer = {"  mqvirtio serve --socket-path /run/vm1.sock --queues 4 --tap mqv1",
                "  mqvirtio serve --vm socket-path=/run/vm1.sock,queues=4,tap=mqv1 --vm socket-path=/run/vm2.sock,loopback "
                        + "--metrics 127.0.0.1:9100"})
    static final class Command extends Streams implements java.util.concurrent.Callable<Integer> {
        @picocli.CommandLine.Spec
        picocli.CommandLine.Model.CommandSpec spec;

        @picocli.CommandLine.Mixin
        VmOptions vm = new VmOptions();

        @Option(names = "--vm", paramLabel = "SPEC", order = 20, description = "one VM's device, repeatable (several "
                + "VMs in one serve, each with its own socket, workers and backend): the options above as key=value, "
                + "comma-separated, e.g. --vm socket-path=/run/vm1.sock,queues=4,tap=mqv1 "
                + "--vm socket-path=/run/vm2.sock,loopback (cpus=0:1 inside a spec)")
        List<String> vms = new ArrayList<>();

        @Option(names = "--max-total-memory", paramLabel = "SIZE", order = 21, description = "the most all VMs of this "
                + "serve may share together; default: four times the host's memory, or --max-memory if that is more")
        String maxTotalMemory;

        @Option(names = "--stats-interval", paramLabel = "S", order = 23, defaultValue = "0",
                description = "print per-queue counters every S seconds")
        double statsEvery;

        @Option(names = "--metrics", paramLabel = "ADDR:PORT", order = 24, description = "serve per-queue counters and the "
                + "JVM's metrics over HTTP on a loopback address (127.0.0.1:9100, [::1]:9100; port 0 picks one, "
                + "logged): /metrics for Prometheus (text format; OpenMetrics or protobuf when the scraper asks), "
                + "/stats in JSON")
        String metrics;

        @Option(names = "--metrics-remote", order = 24, description = "let --metrics bind an address other hosts reach "
                + "(0.0.0.0:9100, a LAN address). The endpoint has no authentication and tells what each VM does: "
                + "firewall it")
        boolean metricsRemote;

        @Option(names = "--capture-snaplen", paramLabel = "N", order = 24, defaultValue = "262144",
                description = "with --capture: the first N bytes of each frame (default ${DEFAULT-VALUE}: all of it)")
        int captureSnaplen;

        @Option(names = "--capture-max-size", paramLabel = "SIZE", order = 24, defaultValue = "1G", description = "with "
                + "--capture: each file grows to SIZE at most, then later frames are left out (default ${DEFAULT-VALUE})")
        String captureMaxSize;

        @Option(names = "--print-capabilities", order = 25,
                description = "print the backend's capabilities as JSON (vhost-user.rst) and exit")
        boolean printCapabilities;

        @Option(names = "--debug", order = 26, description = "log every vhost-user message")
        boolean debug;

        @Override
        public Integer call() throws InterruptedException {
            return run(this, out, err);
        }
    }

    static int run(Command a, PrintStream out, PrintStream err) throws InterruptedException {
        if (a.printCapabilities) {
            out.println("{\n  \"type\": \"net\"\n}");
            return 0;
        }
        Options o = Options.parse(a);
        Logging.setup(o.debug());
        List<String> notSockets = new ArrayList<>();
        for (Systemd.Passed p : o.unusedPassed()) {
            // LISTEN_FDS is only a count: one above what was passed (a wrapper that sets it by hand, a supervisor that
            // is not systemd) counts the JVM's own descriptors, opened before serve ran (its modules image, the
            // jars), and closing those crashed the JVM. Only a socket is closed.
            String what = Systemd.whatIs(p.fd());
            if (what == null || !what.startsWith("socket:")) {
                // said once below: LISTEN_FDS may count up to 1024, a line each would flood the log
                notSockets.add("fd " + p.fd() + " (" + p.name() + "), which is "
                        + (what == null ? "not open" : "no socket but " + what));
                continue;
            }
            // Left open, it would go on listening with nobody to accept: a frontend pointed at it would wait forever
            // instead of being refused. Closed, systemd's own copy is what remains (it watches it again after serve
            // exits), or, under a supervisor that keeps none, the socket goes.
            LOG.log(Level.WARNING, "systemd passed a socket that no VM uses: {0} (fd {1}); closed", p.name(), p.fd());
            new io.mqvirtio.linux.Fd(p.fd()).close();
        }

        if (notSockets.size() == 1) {
            LOG.log(Level.WARNING, "LISTEN_FDS counts {0}: left alone", notSockets.get(0));
        } else if (notSockets.size() > 1) {
            int named = Math.min(3, notSockets.size());
            LOG.log(Level.WARNING, "LISTEN_FDS counts {0} descriptors that are no socket: {1}{2}: left alone",
                    String.valueOf(notSockets.size()), String.join("; ", notSockets.subList(0, named)),
                    notSockets.size() > named ? "; and " + (notSockets.size() - named) + " more" : "");
        }
        Running r = new Running();
        // SIGTERM/SIGINT only set the latch below, even during start-up, and SIGHUP is logged; the hook covers the
        // other ways out (a signal the JVM could not be asked to handle, an exit elsewhere) and is a no-op after an
        // orderly stop.
        Runtime.getRuntime().addShutdownHook(Thread.ofPlatform().name("mqvirtio-shutdown").unstarted(() -> r.stop("exit")));
        if (!Signals.onTermination(r::requestStop)) {
            LOG.log(Level.WARNING, "cannot handle SIGTERM/SIGINT (sun.misc.Signal unavailable): they exit with 128+signal");
        }
        if (!Signals.onRequests(sig -> LOG.log(Level.INFO, "SIG{0}: serve has nothing to reload and goes on serving "
                + "(SIGTERM stops it)", sig))) {
            LOG.log(Level.WARNING, "cannot handle SIGHUP, SIGUSR1 or SIGUSR2 (sun.misc.Signal unavailable): they stop "
                    + "serve, status 128+signal");
        }
        try {
            r.start(o);
        } catch (RuntimeException | IOException e) {
            r.stop("failed start-up");
            err.println("mqvirtio: serve: " + message(e));
            return 1;
        }
        if (r.stopRequested.getCount() > 0) { // READY=1 only for a serve that serves every VM
            Systemd.notify("READY=1\nSTATUS=serving " + o.vms().size() + " VM" + (o.vms().size() == 1 ? "" : "s")
                    + "\nMAINPID=" + ProcessHandle.current().pid());
        }
        long every = o.statsEvery() > 0 ? (long) (o.statsEvery() * 1000) : TimeUnit.HOURS.toMillis(1);
        // systemd's watchdog (WatchdogSec=), armed by READY: without its pings it kills serve (SIGABRT) each period
        long watchdog = Systemd.watchdogPingMillis(System.getenv(), ProcessHandle.current().pid());
        long nextStats = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(every);
        boolean watchdogFailed = false;
        while (true) {
            long wait = Math.max(0, TimeUnit.NANOSECONDS.toMillis(nextStats - System.nanoTime()));
            if (r.stopRequested.await(watchdog > 0 ? Math.min(wait, watchdog) : wait, TimeUnit.MILLISECONDS)) {
                break;
            }
            // a ping that cannot be sent is said once (at 10 ms a ping, a line each would flood the log)
            if (watchdog > 0 && !Systemd.notify("WATCHDOG=1", watchdogFailed ? Level.DEBUG : Level.WARNING)) {
                watchdogFailed = true;
            }
            if (System.nanoTime() - nextStats >= 0) {
                nextStats = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(every);
                if (o.statsEvery() > 0) {
                    Stats.printTotals(new Stats.Sample(0, r.snapshot()), out);
                }
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
        /** The TAP devices the VMs use, as the kernel named them (only the thread that starts VMs touches it). */
        private final Set<String> tapDevices = new HashSet<>();
        private MetricsServer metrics;
        private boolean stopped;

        /** One VM's running parts. */
        private record Started(NetDevice device, VhostUserServer server, String socket, String backendName) {}

        /** How long a second signal's exit waits for its line to be written to stderr. */
        static final long SAY_EXIT_MILLIS = 200;

        void requestStop(String sig) {
            if (!signal.compareAndSet(null, sig)) {
                // a second signal while stopping: the user insists (or stopping hangs); leave at once. The line is
                // said on a thread of its own and waited for a bounded time: with stderr a pipe nobody reads, the
                // print waits for good (for room, or for the log thread that holds the stream while it waits for room)
                Thread say = Thread.ofPlatform().daemon().name("mqvirtio-exit").start(
                        () -> System.err.println("mqvirtio: SIG" + sig + " again while stopping: exiting now"));
                try {
                    say.join(SAY_EXIT_MILLIS);
                } catch (InterruptedException e) {
                    // leaving anyway
                }
                Runtime.getRuntime().halt(1);
            }
            stopRequested.countDown();
        }

        void start(Options o) throws IOException {
            for (String g : o.vms().stream().map(Vm::socketGroup).filter(java.util.Objects::nonNull).distinct().toList()) {
                try {
                    java.nio.file.FileSystems.getDefault().getUserPrincipalLookupService().lookupPrincipalByGroupName(g);
                } catch (IOException e) {
                    throw new IOException("--socket-group: no group named " + g, e);
                }
            }
            // One budget for the whole process: the VMs' limits differ, their total is shared.
            io.mqvirtio.memory.MemoryBudget budget = new io.mqvirtio.memory.MemoryBudget(
                    o.vms().stream().mapToLong(Vm::maxMemory).max().orElse(1), o.maxTotalMemory());
            for (Vm vm : o.vms()) {
                // a stop asked for meanwhile (SIGTERM while a VM's capture or TAP started) starts no more of them: each
                // may take seconds, and many, past systemd's stop timeout (then SIGKILL)
                if (stopRequested.getCount() == 0) {
                    return;
                }
                startVm(vm, o, budget.withPerVm(vm.maxMemory()));
            }
            if (o.metrics() != null && stopRequested.getCount() > 0) {
                List<MetricsServer.Source> sources = new ArrayList<>();
                synchronized (this) {
                    for (Started s : started) {
                        sources.add(new MetricsServer.Source(s.device(), s.socket(), s.backendName(), s.server()::hasSession));
                    }
                }
                MetricsServer m;
                try {
                    m = MetricsServer.start(o.metrics(), sources, o.metricsRemote());
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

        private void startVm(Vm vm, Options o, io.mqvirtio.memory.MemoryBudget memory) throws IOException {
            String group = vm.socketGroup();
            PacketBackend backend = vm.loopback() ? new LoopbackBackend(vm.queues(), vm.mtu()) : TapBackend.open(vm.tap(), vm.queues(), vm.tapTx());
            if (backend instanceof TapBackend tap && !tapDevices.add(tap.interfaceName())) {
                // Options refuse a name given twice, but mqv%d is the kernel's pick, which a later VM's name may be;
                // a device shared by two VMs would steer one VM's frames to the other.
                backend.close();
                throw new IllegalStateException("tap " + tap.interfaceName() + ": the TAP device of another VM (two VMs "
                        + "on one device would get each other's frames)");
            }
            NetDevice device;
            try {
                device = new NetDevice(new NetDevice.Config(vm.name(), vm.queues(), vm.mtu(), vm.busyPoll(), vm.cpus(),
                        vm.pollMicros()), backend);
            } catch (RuntimeException e) {
                backend.close();
                throw e;
            }
            if (vm.capture() != null) {
                try {
                    startCapture(device, vm, o);
                } catch (IOException | RuntimeException e) {
                    device.close();
                    throw new IOException("--capture " + vm.capture() + ": " + message(e), e);
                }
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

        /**
         * Starts {@code vm}'s capture: the directory made or checked, a file per queue pair made. On a thread of its
         * own, waited for {@link #CAPTURE_START_WAIT} at most: each step is a call into the file system, which a dead
         * NFS server (or a hung FUSE daemon) never answers; serve's start fails then, with why. The thread left
         * behind is a daemon, and if the file system answers later, the device it would have captured is closed by
         * then and the files it made are closed again ({@link NetDevice#startCapture}).
         */
        private static void startCapture(NetDevice device, Vm vm, Options o) throws IOException {
            Path dir = vm.capture();
            var task = new java.util.concurrent.FutureTask<List<io.mqvirtio.capture.QueueCapture>>(() -> {
                if (!java.nio.file.Files.isDirectory(dir)) {
                    java.nio.file.Files.createDirectories(dir, java.nio.file.attribute.PosixFilePermissions
                            .asFileAttribute(java.nio.file.attribute.PosixFilePermissions.fromString("rwx------")));
                }
                String unsafe = unsafeCaptureDirectory(dir);
                if (unsafe != null) {
                    throw new IOException(unsafe);
                }
                return device.startCapture(dir, o.captureSnaplen(), o.captureMaxBytes());
            });
            Thread.ofPlatform().daemon().name("capture-start-" + vm.name()).start(task);
            List<io.mqvirtio.capture.QueueCapture> captures;
            try {
                captures = task.get(CAPTURE_START_WAIT.toMillis(), TimeUnit.MILLISECONDS);
            } catch (java.util.concurrent.TimeoutException e) {
                throw new IOException("its file system did not answer within " + CAPTURE_START_WAIT.toSeconds()
                        + " s (a file system that hangs: a dead NFS server?)");
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IOException("interrupted while the capture started", e);
            } catch (java.util.concurrent.ExecutionException e) {
                if (e.getCause() instanceof IOException io) {
                    throw io;
                }
                if (e.getCause() instanceof RuntimeException r) {
                    throw r;
                }
                throw new IOException(e.getCause());
            }
            LOG.log(Level.INFO, "{0}: capturing {1} queue pair{2} to {3}", vm.name(), captures.size(),
                    captures.size() == 1 ? "" : "s", dir.resolve(vm.name() + "-qp*.pcapng"));
        }

        /** How long a VM's capture may take to start (its directory and files made) before serve's start fails. */
        static final java.time.Duration CAPTURE_START_WAIT = java.time.Duration.ofSeconds(5);

        /**
         * Why the capture directory {@code dir} (links followed: the directory the files go into) is not one to
         * write a VM's traffic into, or null. Its owner, if another user than ours or root, may rename, remove or
         * replace each capture, and so may everyone when any user may write it without the sticky bit (the files are
         * 0600 and made with O_EXCL, so nobody reads them or has them written through a link; what is refused is a
         * capture someone else can swap for another).
         */
        static String unsafeCaptureDirectory(Path dir) throws IOException {
            java.util.Map<String, Object> a = java.nio.file.Files.readAttributes(dir, "unix:uid,mode");
            int owner = (Integer) a.get("uid");
            int mode = (Integer) a.get("mode");
            int me = (Integer) java.nio.file.Files.getAttribute(Path.of("/proc/self"), "unix:uid");
            if (owner != me && owner != 0) {
                return dir + " belongs to user " + owner + ", who could replace or remove the captures; use a "
                        + "directory of mqvirtio's user (" + me + ") or root";
            }
            if ((mode & 0002) != 0 && (mode & 01000) == 0) {
                return dir + " may be written by any user (mode " + Integer.toOctalString(mode & 07777) + "), who "
                        + "could replace or remove the captures; use a directory only mqvirtio's user can write";
            }
            return null;
        }

        synchronized List<DeviceStats> snapshot() {
            List<DeviceStats> l = new ArrayList<>();
            for (Started s : started) {
                l.add(DeviceStats.of(s.device(), s.socket(), s.backendName(), s.server().hasSession()));
            }
            return l;
        }

        /** Serves {@code device} on {@code server} as a VM it started (tests: a device on a backend of their own). */
        synchronized void adopt(NetDevice device, VhostUserServer server) {
            started.add(new Started(device, server, server.path().toString(), device.config().name()));
        }

        /**
         * How long the stop waits for the VMs, all together: each VM's session (5 s) and socket, then its workers (one
         * command timeout, 10 s, for all of a device's) and backend. Within systemd's default TimeoutStopSec (90 s).
         */
        static final java.time.Duration STOP_WAIT = java.time.Duration.ofSeconds(30);

        /**
         * Closes what was started: the metrics endpoint, then every VM at once, each on a thread of its own, all waited
         * for {@link #STOP_WAIT} at most (a VM's workers that wait for the host, a TAP ioctl under the rtnl lock, cost
         * the stop one bound, not one per VM: 16 VMs one after another went past systemd's stop timeout, then
         * SIGKILL); then their captures, under one deadline. Idempotent.
         */
        synchronized void stop(String why) {
            if (stopped) {
                return;
            }
            stopped = true;
            if (metrics != null) {
                metrics.close();
            }
            List<io.mqvirtio.capture.QueueCapture> captures = new ArrayList<>();
            List<Thread> stopping = new ArrayList<>();
            for (int i = started.size() - 1; i >= 0; i--) {
                Started s = started.get(i);
                stopping.add(Thread.ofPlatform().daemon().name("stop-" + s.device().config().name()).start(() -> {
                    try {
                        s.server().close(); // ends the session and removes the socket file we listened on
                        // stops the workers, then closes the backend (TAP queues); its captures finish meanwhile
                        List<io.mqvirtio.capture.QueueCapture> c = s.device().closeLeavingCaptures();
                        synchronized (captures) {
                            captures.addAll(c);
                        }
                        LOG.log(Level.INFO, "{0}: stopped ({1})", s.device().config().name(), why);
                    } catch (RuntimeException e) {
                        LOG.log(Level.ERROR, "{0}: stopping failed: {1}", s.device().config().name(), message(e));
                    }
                }));
            }
            long deadline = System.nanoTime() + STOP_WAIT.toNanos();
            for (Thread t : stopping) {
                try {
                    long left = deadline - System.nanoTime();
                    if (left > 0) {
                        t.join(java.time.Duration.ofNanos(left));
                    }
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    break;
                }
                if (t.isAlive()) {
                    LOG.log(Level.ERROR, "{0}: did not stop within {1} s; left as it is", t.getName().substring(5),
                            STOP_WAIT.toSeconds());
                }
            }
            // Every VM's captures together, under one deadline: a disk that hangs costs the stop 5 s, not 5 s a
            // queue pair (before: 1 s + 5 s each in turn, minutes for many, past systemd's TimeoutStopSec).
            List<io.mqvirtio.capture.QueueCapture> finishing;
            synchronized (captures) {
                finishing = List.copyOf(captures);
            }
            io.mqvirtio.capture.QueueCapture.closeAll(finishing, io.mqvirtio.capture.QueueCapture.CLOSE_WAIT);
            flushLogs();
        }

        private static void flushLogs() {
            for (var h : java.util.logging.Logger.getLogger("").getHandlers()) {
                h.flush();
            }
        }
    }
}
