package io.mqvirtio.bench;

import io.mqvirtio.backend.SinkBackend;
import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.Affinity;
import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.IoUring;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.PacketSocket;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.NetDriver;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.Port;
import io.mqvirtio.net.QueueCounters;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.vhostuser.Protocol;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.Experiment;
import io.mqvirtio.virtio.VirtioFeatures;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicLongArray;
import java.util.concurrent.locks.LockSupport;
import java.util.stream.Stream;

/**
 * {@code mqvirtio bench}: runs each scenario at each number of queue pairs, ring mode and frame size, one after the
 * other, and returns one {@link Measurement} per point. A scenario's processes and devices are set up once per
 * number of queue pairs and ring mode and reused for every frame size (testpmd's txonly changes its frame length
 * between points). A ring mode is asked of both sides: our driver's features, virtio-user's devargs; our backend and
 * DPDK's vhost offer both layouts and IN_ORDER and take what their frontend asks.
 *
 * <p>Each point: the sender starts, runs for the warm-up, then both sides' counters and threads' CPU times are
 * read at the start and at the end of the measured interval; the receiver's count over its own interval gives the
 * packet rate.
 */
public final class BenchRunner {
    /** Our backend's worker threads in a point's breakdown ("backend-qp0", ...). */
    static final String WORKER_PREFIX = "backend-qp";
    /**
     * @param txCpus   CPUs of the sending side's busy threads (driver threads, or testpmd's forwarding lcore); empty:
     *                 not pinned
     * @param rxCpus   CPUs of the receiving side's (our backend's workers, or testpmd's forwarding lcore)
     * @param busyPoll our backend's workers poll their rings instead of sleeping until kicked
     * @param pollMicros without busy polling: how long our workers poll after frames moved before they sleep
     * @param copySink our backend's sink copies each frame out of guest memory (as DPDK's vhost PMD does into an
     *                 mbuf) instead of dropping it untouched
     * @param repeat   measured intervals per point, back to back after one warm-up; the point is the best of them
     *                 (on a shared machine, the interval least disturbed by other work)
     * @param rounds   how many times the whole grid of points is measured, one round after the other (each point
     *                   set up afresh in each round); the point is its best round, and each round gives a ratio to
     *                   the reference measured minutes apart at most
     * @param logDir   where testpmd's output goes
     * @param rings    the ring modes to measure every scenario in
     * @param ab       null, or the experiment turned on and off in windows of {@code abWindow} seconds while each
     *                 point's traffic runs (paired windows: see {@link PairedWindows})
     */
    public record Options(List<Scenario> scenarios, List<Integer> sizes, List<Integer> pairs, List<RingMode> rings, double warmup,
                          double seconds, int repeat, int rounds, boolean busyPoll, int pollMicros, int[] txCpus,
                          int[] rxCpus, boolean copySink, Path logDir, Experiment ab, double abWindow) {

        public Options(List<Scenario> scenarios, List<Integer> sizes, List<Integer> pairs, List<RingMode> rings,
                       double warmup, double seconds, int repeat, int rounds, boolean busyPoll, int pollMicros,
                       int[] txCpus, int[] rxCpus, boolean copySink, Path logDir) {
            this(scenarios, sizes, pairs, rings, warmup, seconds, repeat, rounds, busyPoll, pollMicros, txCpus, rxCpus,
                    copySink, logDir, null, 0);
        }
    }

    /** Told of each point of each round as it completes, and of anything worth a line. */
    public interface Listener {
        void measured(int done, int total, int round, Measurement m);

        void note(String line);
    }

    private final Options o;
    private final Listener listener;
    private final Path testpmd = Testpmd.find();
    private Path sockets;

    private BenchRunner(Options o, Listener listener) {
        this.o = o;
        this.listener = listener;
    }

    public static List<Measurement> run(Options o, Listener listener) throws IOException, InterruptedException {
        return new BenchRunner(o, listener).runAll();
    }

    /** Why a scenario cannot run on this machine, or null. */
    public static String unavailable(Scenario s) {
        if (s.needsDpdk() && Testpmd.find() == null) {
            String named = System.getProperty("mqvirtio.testpmd", System.getenv("MQV_TESTPMD"));
            if (named != null && !named.isBlank()) {
                return "DPDK is missing: " + named + " (named by MQV_TESTPMD) is not an executable dpdk-testpmd";
            }
            return "DPDK is missing: no dpdk-testpmd on PATH or in /usr/bin (install it with apt-get install dpdk-dev, or "
                    + "scripts/install-deps.sh; MQV_TESTPMD names another binary)";
        }
        if (s.needsRoot()) {
            return BenchNetns.unavailableReason();
        }
        return null;
    }

    private List<Measurement> runAll() throws IOException, InterruptedException {
        int points = o.scenarios().size() * o.sizes().size() * o.pairs().size() * o.rings().size();
        int total = points * o.rounds();
        for (Scenario s : o.scenarios()) {
            String why = unavailable(s);
            if (why != null) {
                listener.note("scenario " + s.title() + " skipped: " + why);
            }
        }
        // every round measures every point, in the same order; a point's rounds are kept in order
        Map<String, List<Measurement>> byPoint = new LinkedHashMap<>();
        int done = 0;
        sockets = Files.createTempDirectory("mqvirtio-bench");
        try {
            for (int round = 1; round <= o.rounds(); round++) {
                for (int pairs : o.pairs()) {
                    // a point's reference (the same ring mode) runs beside it, minutes apart at most
                    for (RingMode ring : o.rings()) {
                        for (Scenario s : o.scenarios()) {
                            done = runScenario(s, pairs, ring, round, done, total, byPoint);
                        }
                    }
                }
            }
        } finally {
            deleteTree(sockets);
        }
        List<Measurement> out = new ArrayList<>();
        for (List<Measurement> rounds : byPoint.values()) {
            out.add(Measurement.acrossRounds(rounds));
        }
        return out;
    }

    /** One scenario at one number of pairs in one ring mode, every frame size; returns the points done so far. */
    private int runScenario(Scenario s, int pairs, RingMode ring, int round, int done, int total,
                            Map<String, List<Measurement>> byPoint) throws InterruptedException {
        String why = unavailable(s);
        // how far apart the two sides' CPUs are right now (nothing else of ours runs yet)
        double roundTrip = why != null || o.txCpus().length == 0 || o.rxCpus().length == 0 ? Double.NaN
                : CpuRoundTrip.measure(o.txCpus()[0], o.rxCpus()[0], 20_000, 5);
        Session session = null;
        try {
            for (int size : o.sizes()) {
                Measurement m;
                if (why != null) {
                    m = Measurement.skipped(s, size, pairs, ring, why);
                } else {
                    try {
                        if (session == null) {
                            session = open(s, pairs, ring);
                        }
                        m = session.measure(size);
                    } catch (InterruptedException e) {
                        throw e;
                    } catch (Exception | Error e) {
                        m = Measurement.failed(s, size, pairs, ring, message(e));
                        closeQuietly(session);
                        session = null; // set up afresh for the next point
                    }
                }
                m = m.withRoundTrip(roundTrip);
                byPoint.computeIfAbsent(s.id() + "/" + size + "/" + pairs + "/" + ring.label(), k -> new ArrayList<>())
                        .add(m);
                listener.measured(++done, total, round, m);
            }
        } finally {
            closeQuietly(session);
        }
        return done;
    }

    private static String message(Throwable e) {
        String m = e.getMessage();
        return e.getClass().getSimpleName() + (m == null ? "" : ": " + m);
    }

    private void closeQuietly(Session s) {
        if (s != null) {
            try {
                s.close();
            } catch (Exception e) {
                listener.note("closing " + s.getClass().getSimpleName() + ": " + message(e));
            }
        }
    }

    private Session open(Scenario s, int pairs, RingMode ring) throws Exception {
        Path sock = sockets.resolve("s" + s.id() + "-" + pairs + "-" + Long.toHexString(System.nanoTime() & 0xffffff) + ".sock");
        return switch (s) {
            case OURS_TO_OURS -> new DriverToBackend(s, pairs, ring, sock, false);
            case OURS_TO_TAP -> new DriverToBackend(s, pairs, ring, sock, true);
            case DPDK_TO_OURS -> new DpdkToBackend(pairs, ring, sock);
            case DPDK_TO_DPDK -> new DpdkToDpdk(pairs, ring, sock);
            case OURS_TO_DPDK -> new DriverToDpdk(pairs, ring, sock);
            case TAP_TO_OURS -> new TapToBackend(pairs, ring, sock);
            case WRITEV_TO_TAP, TAP_TO_READV, URING_TO_TAP, TAP_TO_URING, TAP_TO_READV_RING -> new SyscallLoop(s, pairs, ring);
        };
    }

    private Path log(Scenario s, int pairs, RingMode ring, String role) {
        return o.logDir().resolve("testpmd-s" + s.id() + "-" + pairs + "pairs-" + ring.label().replace('+', '-') + "-"
                + role + ".log");
    }

    /** Our driver's options for a ring mode: the packed layout and IN_ORDER refused where the mode has none. */
    private static NetDriver.Options driverOptions(int pairs, RingMode ring) {
        return NetDriver.Options.pairs(pairs).withFeatures(ring.driverFeatures());
    }

    /**
     * The virtio features of a SET_FEATURES as a backend saw it, without bit 30 (VHOST_USER_F_PROTOCOL_FEATURES:
     * vhost-user's, not the device's; our driver's {@link NetDriver#features()} leaves it out too), so that what both
     * ends of a connection report, and every row, compare; {@link Measurement#UNKNOWN} stays as it is.
     */
    private static long virtio(long features) {
        return features == Measurement.UNKNOWN ? features : features & ~VirtioFeatures.bit(Protocol.F_PROTOCOL_FEATURES);
    }

    /** What our device saw negotiated by its frontend, or {@link Measurement#UNKNOWN} before any. */
    private static long deviceFeatures(NetDevice dev) {
        long f = dev.lastNegotiatedFeatures();
        return f == 0 ? Measurement.UNKNOWN : virtio(f);
    }

    private void sleep(double seconds) throws InterruptedException {
        Thread.sleep((long) (seconds * 1000));
    }

    // ---- samples ----

    /** Our device's per-pair TX-ring (or RX-ring) packet counts and worker CPU times at one instant. */
    private record DeviceSample(long nanos, long[] packets, long[] cpu) {
        static DeviceSample of(NetDevice d) {
            return of(d, false);
        }

        static DeviceSample of(NetDevice d, boolean rxRings) {
            List<QueueCounters.Snapshot> c = d.counters();
            long[] p = new long[d.pairs()];
            for (int i = 0; i < p.length; i++) {
                p[i] = c.get(2 * i + (rxRings ? 0 : 1)).packets();
            }
            long[] cpu = d.workerCpuNanos();
            return new DeviceSample(System.nanoTime(), p, cpu);
        }

        static long packets(DeviceSample a, DeviceSample b) {
            long n = 0;
            for (int i = 0; i < a.packets.length; i++) {
                n += b.packets[i] - a.packets[i];
            }
            return n;
        }

        static void threads(DeviceSample a, DeviceSample b, List<Measurement.ThreadCpu> out) {
            for (int i = 0; i < a.packets.length; i++) {
                out.add(new Measurement.ThreadCpu(Measurement.RX, WORKER_PREFIX + i, b.cpu[i] - a.cpu[i],
                        b.packets[i] - a.packets[i]));
            }
        }
    }

    /** A testpmd's port counters and thread CPU times at one instant. */
    private record PmdSample(Testpmd.PortStats port, Map<String, Long> cpu) {
        static PmdSample of(Testpmd t) {
            try {
                Testpmd.PortStats s = t.portStats();
                return new PmdSample(s, t.threadCpu());
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted", e);
            }
        }

        static void threads(String side, PmdSample a, PmdSample b, long packets, List<Measurement.ThreadCpu> out) {
            for (Map.Entry<String, Long> e : b.cpu.entrySet()) {
                long before = a.cpu.getOrDefault(e.getKey(), 0L);
                out.add(new Measurement.ThreadCpu(side, "testpmd-" + e.getKey(), e.getValue() - before, packets));
            }
        }

        static double seconds(PmdSample a, PmdSample b) {
            return (b.port.nanoTime() - a.port.nanoTime()) / 1e9;
        }
    }

    private static void driverThreads(TrafficRun.Result r, List<Measurement.ThreadCpu> out) {
        for (TrafficRun.PairResult p : r.pairs()) {
            out.add(new Measurement.ThreadCpu(Measurement.TX, "driver-qp" + p.pair(), p.cpuNanos(), p.txPackets()));
        }
    }

    // ---- scenarios ----

    /**
     * One scenario at one number of queue pairs, set up once and measured at each frame size: traffic starts, runs
     * for the warm-up, then both sides are sampled at the start and the end of each measured interval; the point is
     * the best of its intervals.
     */
    private abstract class Session implements AutoCloseable {
        /** Starts traffic of {@code size}-byte frames. */
        abstract void begin(int size) throws Exception;

        /** Both sides' counters and CPU times now. */
        abstract Object sample() throws Exception;

        /** What happened between two samples. */
        abstract Measurement between(int size, Object a, Object b) throws Exception;

        /** Stops the traffic that {@link #begin} started, if it must stop between frame sizes. */
        void end() throws Exception {}

        final Measurement measure(int size) throws Exception {
            begin(size);
            try {
                sleep(o.warmup());
                if (o.ab() != null) {
                    return pairedWindows(size);
                }
                Object a = sample();
                List<Measurement> intervals = new ArrayList<>();
                for (int i = 0; i < o.repeat(); i++) {
                    sleep(o.seconds());
                    Object b = sample();
                    intervals.add(between(size, a, b));
                    a = b;
                }
                return Measurement.best(intervals);
            } finally {
                end();
            }
        }

        /**
         * The measured time cut into windows with the experiment off and on in turn (off-on, on-off, ...: each pair
         * of neighbours in both orders, so that a drift favours neither); each pair's on/off rate ratio goes to
         * {@link PairedWindows}, told as a note; the point is the whole time.
         */
        private Measurement pairedWindows(int size) throws Exception {
            Experiment e = o.ab();
            int pairsOfWindows = Math.max(1, (int) Math.round(o.seconds() * o.repeat() / o.abWindow() / 2));
            PairedWindows w = new PairedWindows();
            try {
                Object first = sample();
                Object a = first;
                Measurement last = null;
                for (int k = 0; k < pairsOfWindows; k++) {
                    double[] mpps = new double[2]; // off, on
                    double[] workerNs = new double[2];
                    for (int half = 0; half < 2; half++) {
                        boolean on = (k % 2 == 0) == (half == 1);
                        if (e == Experiment.DIRTY_LOG) {
                            dirtyLog(on);
                        } else {
                            e.set(on);
                        }
                        sleep(o.abWindow());
                        Object b = sample();
                        last = between(size, a, b);
                        mpps[on ? 1 : 0] = last.mpps();
                        workerNs[on ? 1 : 0] = workerNsPerFrame(last);
                        a = b;
                    }
                    w.add(mpps[0], mpps[1], workerNs[0], workerNs[1]);
                }
                Measurement whole = between(size, first, a);
                listener.note(String.format(Locale.ROOT, "%s %d B %d pair%s %s: %s %s", whole.scenario().title(), size,
                        whole.pairs(), whole.pairs() == 1 ? "" : "s", whole.ringUsed().label(),
                        e.name().toLowerCase(Locale.ROOT).replace('_', '-'), w));
                return whole.withNote(whole.note() + "; " + e.name().toLowerCase(Locale.ROOT).replace('_', '-')
                        + " " + w);
            } finally {
                e.reset();
                if (e == Experiment.DIRTY_LOG) {
                    dirtyLog(false);
                }
            }
        }

        /** Our backend's workers' CPU ns per frame they moved in {@code m}, or NaN when it has none. */
        private static double workerNsPerFrame(Measurement m) {
            long cpu = 0;
            boolean any = false;
            for (Measurement.ThreadCpu t : m.threads()) {
                if (t.name().startsWith(WORKER_PREFIX)) {
                    cpu += t.cpuNanos();
                    any = true;
                }
            }
            return any && m.packets() > 0 ? (double) cpu / m.packets() : Double.NaN;
        }

        /** Has the backend under test log its writes (through our driver, as QEMU asks it when migrating). */
        void dirtyLog(boolean on) throws Exception {
            throw new UnsupportedOperationException("--ab dirty-log needs our driver as the frontend (scenarios 1 and 4)");
        }

        @Override
        public abstract void close() throws Exception;
    }

    private NetDevice device(int pairs, PacketBackend backend) {
        return new NetDevice(new NetDevice.Config("bench", pairs, 1500, o.busyPoll(), o.rxCpus(), o.pollMicros()), backend);
    }

    private PacketBackend sink(int pairs) {
        return o.copySink() ? new CopySinkBackend(pairs) : new SinkBackend(pairs);
    }

    private String sinkNote() {
        return (o.copySink() ? "copying sink" : "sink") + (o.busyPoll() ? ", busy-poll"
                : o.pollMicros() > 0 ? ", notifications after a " + o.pollMicros() + " µs poll window" : ", notifications");
    }

    private static String deviceErrors(NetDevice dev) {
        long errors = 0;
        for (QueueCounters.Snapshot c : dev.counters()) {
            errors += c.errors();
        }
        return errors > 0 ? "; " + errors + " errors counted by the device" : "";
    }

    /** Scenarios 1 and 5: our driver into our backend (a sink, or a multiqueue TAP in a namespace). */
    private final class DriverToBackend extends Session {
        private final Scenario scenario;
        private final int pairs;
        private final RingMode ring;
        private final TapInNetns tap; // scenario 5's, null for the sink
        private final NetDevice dev;
        private final VhostUserServer server;
        private final NetDriver nic;
        private TrafficRun.Running traffic;

        private record Sample(TrafficRun.Snapshot driver, DeviceSample device, long tapRx) {}

        @Override
        void dirtyLog(boolean on) {
            nic.setDirtyLog(on);
        }

        DriverToBackend(Scenario scenario, int pairs, RingMode ring, Path sock, boolean toTap) throws Exception {
            this.scenario = scenario;
            this.pairs = pairs;
            this.ring = ring;
            // a TAP's MAC is not the frames' destination (02:00:00:00:00:01): the kernel counts and drops them
            TapInNetns t = toTap ? TapInNetns.open(pairs) : null;
            NetDevice d = null;
            VhostUserServer srv = null;
            try {
                d = device(pairs, t != null ? t.backend() : sink(pairs));
                srv = VhostUserServer.listen(sock, d);
                nic = NetDriver.connect(sock, driverOptions(pairs, ring));
            } catch (Exception | Error e) {
                if (srv != null) {
                    srv.close();
                }
                if (d != null) {
                    d.close();
                }
                if (t != null) {
                    t.close();
                }
                throw e;
            }
            tap = t;
            dev = d;
            server = srv;
        }

        @Override
        void begin(int size) {
            traffic = TrafficRun.start(nic, pairs, TrafficRun.Mode.TX_ONLY, size, o.txCpus());
        }

        @Override
        Object sample() throws Exception {
            TrafficRun.Snapshot t = traffic.sample();
            DeviceSample d = DeviceSample.of(dev);
            return new Sample(t, d, tap == null ? -1 : tap.ns().rxPackets(tap.name()));
        }

        @Override
        Measurement between(int size, Object x, Object y) {
            Sample a = (Sample) x;
            Sample b = (Sample) y;
            TrafficRun.Result r = TrafficRun.between(a.driver(), b.driver());
            String note = sinkNote();
            if (tap != null) {
                note = "tap " + tap.name() + " in netns " + tap.ns().name() + " counted rx_packets +" + (b.tapRx() - a.tapRx())
                        + (o.busyPoll() ? ", busy-poll" : ", notifications") + ", TX by " + dev.ioMethods().get(1);
            }
            // both ends' view of one negotiation: they must agree (else that is worth a word in the note)
            long features = nic.features();
            if (deviceFeatures(dev) != features) {
                note += "; our backend saw features 0x" + Long.toHexString(deviceFeatures(dev)) + ", the driver 0x"
                        + Long.toHexString(features);
            }
            List<Measurement.ThreadCpu> threads = new ArrayList<>();
            driverThreads(r, threads);
            DeviceSample.threads(a.device(), b.device(), threads);
            return new Measurement(scenario, size, pairs, ring, features, DeviceSample.packets(a.device(), b.device()),
                    (b.device().nanos() - a.device().nanos()) / 1e9, r.txPackets(), r.seconds(), threads,
                    Measurement.Status.OK, note + deviceErrors(dev));
        }

        @Override
        void end() throws InterruptedException {
            if (traffic != null) {
                traffic.close();
                traffic = null;
            }
        }

        @Override
        public void close() throws Exception {
            try {
                end();
                nic.close();
            } finally {
                try {
                    server.close();
                } finally {
                    try {
                        dev.close();
                    } finally {
                        if (tap != null) {
                            tap.close();
                        }
                    }
                }
            }
        }
    }

    /**
     * A multiqueue TAP device in a namespace of the bench's own, up, with a MAC that is not the bench frames'
     * destination (so that the kernel counts and drops what is written into it); closed with the namespace.
     */
    private record TapInNetns(BenchNetns ns, String name, TapBackend backend) implements AutoCloseable {
        static TapInNetns open(int pairs) throws Exception {
            BenchNetns ns = BenchNetns.create();
            TapBackend backend = null;
            try {
                String name = "mqvb" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000, 0xfffff));
                backend = ns.inside(() -> TapBackend.open(name, pairs));
                ns.ip("link", "set", name, "address", "02:00:00:00:00:fe");
                ns.ip("link", "set", name, "up");
                return new TapInNetns(ns, name, backend);
            } catch (Exception | Error e) {
                if (backend != null) {
                    backend.close();
                }
                ns.close();
                throw e;
            }
        }

        /** {@code n} packet sockets on the device, opened in its namespace, for {@link TapInjector}. */
        List<PacketSocket> sockets(int n) throws Exception {
            List<PacketSocket> l = new ArrayList<>();
            try {
                for (int i = 0; i < n; i++) {
                    l.add(ns.inside(() -> PacketSocket.open(name)));
                }
            } catch (Exception | Error e) {
                l.forEach(PacketSocket::close);
                throw e;
            }
            return l;
        }

        @Override
        public void close() throws Exception {
            try {
                backend.close();
            } finally {
                ns.close();
            }
        }
    }

    /** Host-side sender threads for a TAP: as many as queue pairs, two at most (this is a 2-CPU machine's bench). */
    private static int injectors(int pairs) {
        return Math.min(pairs, 2);
    }

    /**
     * Scenario 6: frames sent on the host side of a multiqueue TAP ({@link TapInjector}, on the sending CPUs), our
     * backend's RX path (workers on the receiving CPUs, woken by the TAP fds unless busy-polling) into our driver,
     * whose threads (on the sending CPUs: the guest is not the host's data path) count and check every frame. The
     * senders yield after every burst, or a driver thread beside them got 2 % of its CPU (the kernel takes every
     * frame, so a sender never waits) and let 6 % of the frames through; on the receiving CPUs the workers then run
     * alone, as scenario 8's loops do.
     */
    private final class TapToBackend extends Session {
        private final int pairs;
        private final RingMode ring;
        private final TapInNetns tap;
        private final NetDevice dev;
        private final VhostUserServer server;
        private final NetDriver nic;
        private TrafficRun.Running traffic;
        private TapInjector injector;

        private record Sample(TrafficRun.Snapshot driver, DeviceSample device, long sent, long[] injectCpu) {}

        TapToBackend(int pairs, RingMode ring, Path sock) throws Exception {
            this.pairs = pairs;
            this.ring = ring;
            TapInNetns t = TapInNetns.open(pairs);
            NetDevice d = null;
            VhostUserServer srv = null;
            try {
                d = device(pairs, t.backend());
                srv = VhostUserServer.listen(sock, d);
                nic = NetDriver.connect(sock, driverOptions(pairs, ring));
            } catch (Exception | Error e) {
                if (srv != null) {
                    srv.close();
                }
                if (d != null) {
                    d.close();
                }
                t.close();
                throw e;
            }
            tap = t;
            dev = d;
            server = srv;
        }

        @Override
        void begin(int size) throws Exception {
            traffic = TrafficRun.start(nic, pairs, TrafficRun.Mode.RX_ONLY, size, o.txCpus());
            injector = new TapInjector(tap.sockets(injectors(pairs)), size, o.txCpus());
        }

        @Override
        Object sample() {
            return new Sample(traffic.sample(), DeviceSample.of(dev, true), injector.sent(), injector.cpu());
        }

        @Override
        Measurement between(int size, Object x, Object y) {
            Sample a = (Sample) x;
            Sample b = (Sample) y;
            TrafficRun.Result r = TrafficRun.between(a.driver(), b.driver());
            long sent = b.sent() - a.sent();
            List<Measurement.ThreadCpu> threads = new ArrayList<>();
            threads.addAll(TapInjector.threadCpu(a.injectCpu(), b.injectCpu(), sent));
            DeviceSample.threads(a.device(), b.device(), threads);
            for (TrafficRun.PairResult p : r.pairs()) {
                threads.add(new Measurement.ThreadCpu(Measurement.RX, "driver-qp" + p.pair(), p.cpuNanos(), p.rxPackets()));
            }
            StringBuilder note = new StringBuilder("tap " + tap.name() + " in netns " + tap.ns().name() + ", "
                    + injector.threads() + " sender thread(s), " + (o.busyPoll() ? "busy-poll" : "notifications")
                    + "; per queue Mpps");
            for (TrafficRun.PairResult p : r.pairs()) {
                note.append(String.format(Locale.ROOT, " %.3f", p.rxPackets() / r.seconds() / 1e6));
            }
            if (r.badFrames() > 0) {
                note.append("; ").append(r.badFrames()).append(" frames of another length than sent");
            }
            return new Measurement(Scenario.TAP_TO_OURS, size, pairs, ring, nic.features(), r.rxPackets(), r.seconds(),
                    sent, (b.device().nanos() - a.device().nanos()) / 1e9, threads,
                    r.badFrames() > 0 ? Measurement.Status.FAILED : Measurement.Status.OK, note + deviceErrors(dev));
        }

        @Override
        void end() throws InterruptedException {
            if (injector != null) {
                injector.close();
                injector = null;
            }
            if (traffic != null) {
                traffic.close();
                traffic = null;
            }
        }

        @Override
        public void close() throws Exception {
            try {
                end();
                nic.close();
            } finally {
                try {
                    server.close();
                } finally {
                    try {
                        dev.close();
                    } finally {
                        tap.close();
                    }
                }
            }
        }
    }

    /**
     * Scenarios 7 and 8, the TAP path's syscall-bound references: one thread per TAP queue (on the receiving CPUs,
     * where our workers run in 5 and 6) doing nothing but one {@code writev} of a 12-byte virtio-net header and a
     * frame per frame (7; the kernel counts and drops them) or one {@code readv} into a header and a 2 KiB buffer per
     * frame (8; frames from {@link TapInjector} on the sending CPUs; an empty queue waits in poll(2)), through the
     * same FFM layer and TAP setup as our backend.
     */
    /** Writes per io_uring_enter in scenario 9: the TX worker's burst of 32. */
    static final int URING_BURST = 32;
    /** Scenario 11's buffers per queue and their size, header included: our driver's RX ring as the bench sets it. */
    static final int RING_SLOTS = 256, RING_SLOT = 2048;

    private final class SyscallLoop extends Session {
        private final Scenario scenario;
        private final int pairs;
        private final RingMode ring;
        private final TapInNetns tap;
        private final List<Port> ports = new ArrayList<>();
        private final AtomicLongArray counts;
        private final List<Thread> threads = new ArrayList<>();
        private final ThreadMXBean mx = ManagementFactory.getThreadMXBean();
        private volatile boolean stop;
        private TapInjector injector;
        /** Whether the loop writes into the TAP (7, 9: the kernel counts) or reads the injector's frames (8, 10, 11). */
        private final boolean writes;
        /** Scenario 11: each queue's buffers, their frames' lengths, and (at q * 16, q * 16 + 8) frames read, copied. */
        private final List<MemorySegment> ringSlots = new ArrayList<>();
        private final List<int[]> ringLengths = new ArrayList<>();
        private final AtomicLongArray ringCounts;
        private final List<Thread> readers = new ArrayList<>();
        private final Arena ringArena = Arena.ofShared();

        private record Sample(long nanos, long[] counts, long[] cpu, long kernelRx, long sent, long[] injectCpu,
                              long[] readerCpu) {}

        SyscallLoop(Scenario scenario, int pairs, RingMode ring) throws Exception {
            boolean uring = scenario == Scenario.URING_TO_TAP || scenario == Scenario.TAP_TO_URING;
            if (uring && IoUring.unavailable() != null) {
                throw new IllegalStateException("io_uring cannot be used here: " + IoUring.unavailable());
            }
            this.scenario = scenario;
            this.writes = scenario.reference() == Scenario.WRITEV_TO_TAP;
            this.pairs = pairs;
            this.ring = ring;
            this.counts = new AtomicLongArray(pairs * 8);
            this.ringCounts = new AtomicLongArray(pairs * 16);
            if (scenario == Scenario.TAP_TO_READV_RING) {
                for (int i = 0; i < pairs; i++) {
                    ringSlots.add(ringArena.allocate((long) RING_SLOTS * RING_SLOT, 4096));
                    ringLengths.add(new int[RING_SLOTS]);
                }
            }
            tap = TapInNetns.open(pairs);
            try {
                for (int i = 0; i < pairs; i++) {
                    Port p = tap.backend().open(i);
                    p.setActive(true);
                    ports.add(p);
                }
            } catch (Exception | Error e) {
                tap.close();
                throw e;
            }
        }

        @Override
        void begin(int size) throws Exception {
            stop = false;
            for (int i = 0; i < pairs; i++) {
                int q = i;
                threads.add(pinned("syscall-q" + i, o.rxCpus(), i, () -> {
                    if (scenario == Scenario.WRITEV_TO_TAP) {
                        writeLoop(q, size);
                    } else if (scenario == Scenario.URING_TO_TAP) {
                        uringWriteLoop(q, size);
                    } else if (scenario == Scenario.TAP_TO_URING) {
                        uringReadLoop(q);
                    } else if (scenario == Scenario.TAP_TO_READV_RING) {
                        ringReadLoop(q);
                    } else {
                        readLoop(q);
                    }
                }));
                if (scenario == Scenario.TAP_TO_READV_RING) {
                    readers.add(pinned("ring-reader-q" + i, o.txCpus(), i, () -> ringReader(q)));
                }
            }
            if (!writes) {
                injector = new TapInjector(tap.sockets(injectors(pairs)), size, o.txCpus());
            }
        }

        /** A daemon thread on the {@code i}-th of {@code cpus} (round robin; none given: where the kernel puts it). */
        private static Thread pinned(String name, int[] cpus, int i, Runnable body) {
            int cpu = cpus.length == 0 ? -1 : cpus[i % cpus.length];
            return Thread.ofPlatform().name(name).daemon().start(() -> {
                if (cpu >= 0) {
                    Affinity.pin(cpu);
                }
                body.run();
            });
        }

        private void writeLoop(int q, int size) {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment hdr = a.allocate(VirtioNet.HDR_SIZE, 8); // zero: no offload asked
                MemorySegment frame = TrafficRun.udpFrame(a, q, size);
                IoVec iov = new IoVec(2);
                iov.add(hdr);
                iov.add(frame);
                Port port = ports.get(q);
                long n = 0;
                while (!stop) {
                    long r;
                    try {
                        r = port.send(iov);
                    } catch (ErrnoException e) {
                        r = 0; // refused (as our worker counts it): not a frame sent
                    }
                    if (r > 0) {
                        counts.setRelease(q * 8, ++n);
                    } else if (r == -1) {
                        Thread.onSpinWait();
                    }
                }
            }
        }

        /**
         * Scenario 9: the frames of 7 (the same header and frame bytes, here one registered buffer), {@link #URING_BURST}
         * of them per {@code io_uring_enter} as {@code IORING_OP_WRITE_FIXED} on the registered TAP queue fd (no file
         * lookup, no iovec import, no page pinning per write: the most io_uring takes off a write); a TAP write
         * completes inline, so the enter returns with all of them done.
         */
        private void uringWriteLoop(int q, int size) {
            try (Arena a = Arena.ofConfined(); IoUring r = IoUring.create(URING_BURST)) {
                MemorySegment frame = TrafficRun.udpFrame(a, q, size);
                MemorySegment buf = a.allocate(VirtioNet.HDR_SIZE + frame.byteSize(), 4096); // zero header: no offload
                MemorySegment.copy(frame, 0, buf, VirtioNet.HDR_SIZE, frame.byteSize());
                r.registerFiles(tap.backend().queueFd(q).fd());
                r.registerBuffers(buf);
                long[] data = new long[URING_BURST];
                int[] res = new int[URING_BURST];
                long n = 0;
                while (!stop) {
                    int k = 0;
                    while (k < URING_BURST && r.prepare(IoUring.OP_WRITE_FIXED, IoUring.SQE_FIXED_FILE, 0, buf.address(),
                            (int) buf.byteSize(), -1, 0, k)) {
                        k++;
                    }
                    r.submit(k);
                    int done = 0;
                    while (done < k) {
                        int got = r.reap(data, res, URING_BURST);
                        for (int i = 0; i < got; i++) {
                            if (res[i] > 0) {
                                n++;
                            }
                        }
                        done += got;
                        if (got == 0) {
                            r.submit(k - done); // wait for the rest (not reached for a TAP: writes complete inline)
                        }
                    }
                    counts.setRelease(q * 8, n);
                }
            }
        }

        /**
         * Scenario 10: 8's reads batched through io_uring: {@code IORING_OP_READ_FIXED} with {@code RWF_NOWAIT} on
         * the registered TAP queue fd, each into a slot (header and 2 KiB) of one registered buffer, as many per
         * {@code io_uring_enter} as the queue held last time (doubling while it keeps filling them, up to
         * {@link #URING_BURST}); a read that finds the queue empty completes with EAGAIN at once (RWF_NOWAIT: it is not
         * left armed on the TAP's poll), and a round without a frame waits in poll(2) as 8 does.
         */
        private void uringReadLoop(int q) {
            int slot = VirtioNet.HDR_SIZE + 2048;
            try (Arena a = Arena.ofConfined(); IoUring r = IoUring.create(URING_BURST)) {
                MemorySegment buf = a.allocate((long) slot * URING_BURST, 4096);
                r.registerFiles(tap.backend().queueFd(q).fd());
                r.registerBuffers(buf);
                long[] data = new long[URING_BURST];
                int[] res = new int[URING_BURST];
                long n = 0;
                int want = 1;
                while (!stop) {
                    for (int i = 0; i < want; i++) {
                        r.prepare(IoUring.OP_READ_FIXED, IoUring.SQE_FIXED_FILE, 0, buf.address() + (long) i * slot,
                                slot, -1, 0, IoUring.RWF_NOWAIT, i);
                    }
                    r.submit(0);
                    int got = 0;
                    int frames = 0;
                    while (got < want) {
                        int k = r.reap(data, res, URING_BURST);
                        for (int i = 0; i < k; i++) {
                            if (res[i] > 0) {
                                frames++;
                            }
                        }
                        got += k;
                        if (k == 0) {
                            r.submit(want - got); // wait for the rest (RWF_NOWAIT reads complete inline: not reached)
                        }
                    }
                    n += frames;
                    counts.setRelease(q * 8, n);
                    if (frames == 0) {
                        tap.backend().queueFd(q).poll(Fd.POLLIN, 100);
                        want = 1;
                    } else {
                        want = frames == want ? Math.min(URING_BURST, want * 2) : frames + 1;
                    }
                }
            }
        }

        /**
         * Scenario 11: 8's loop, each frame read into the next of {@link #RING_SLOTS} buffers (header and 2 KiB, one
         * iovec entry: what our worker gives {@code readv} for a posted RX buffer), which {@link #ringReader} on the
         * CPU of 6's driver copies out before the loop may read into it again. So the kernel writes every frame into
         * lines another CPU read last, as in 6, where 8 writes into one buffer its own cache keeps: what is left
         * between 6 and 11 is our data path, not where the bytes go. A full ring (the reader behind) parks the loop
         * for 10 us; the reader yields when it finds nothing, as our driver's receiving thread does.
         */
        private void ringReadLoop(int q) {
            MemorySegment slots = ringSlots.get(q);
            int[] lengths = ringLengths.get(q);
            AtomicLongArray ring = ringCounts;
            IoVec iov = new IoVec(1);
            Port port = ports.get(q);
            long n = 0;
            while (!stop) {
                if (n - ring.getAcquire(q * 16 + 8) == RING_SLOTS) {
                    LockSupport.parkNanos(10_000);
                    continue;
                }
                int slot = (int) (n % RING_SLOTS);
                iov.clear();
                iov.add(slots, (long) slot * RING_SLOT, RING_SLOT);
                long r = port.receive(iov);
                if (r > 0) {
                    lengths[slot] = (int) r;
                    ring.setRelease(q * 16, ++n);
                    counts.setRelease(q * 8, n);
                } else if (r == -1) {
                    tap.backend().queueFd(q).poll(Fd.POLLIN, 100);
                }
            }
        }

        /** Scenario 11's reader: copies each frame the loop read out of its slot (as our driver's receive does). */
        private void ringReader(int q) {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment slots = ringSlots.get(q);
                int[] lengths = ringLengths.get(q);
                MemorySegment out = a.allocate(RING_SLOT, 64);
                AtomicLongArray ring = ringCounts;
                long done = 0;
                while (!stop) {
                    long ready = ring.getAcquire(q * 16);
                    if (done == ready) {
                        Thread.yield();
                        continue;
                    }
                    for (; done < ready; done++) {
                        int slot = (int) (done % RING_SLOTS);
                        MemorySegment.copy(slots, (long) slot * RING_SLOT, out, 0, lengths[slot]);
                    }
                    ring.setRelease(q * 16 + 8, done);
                }
            }
        }

        private void readLoop(int q) {
            try (Arena a = Arena.ofConfined()) {
                IoVec iov = new IoVec(2);
                iov.add(a.allocate(VirtioNet.HDR_SIZE, 8));
                iov.add(a.allocate(2048, 64));
                Port port = ports.get(q);
                long n = 0;
                while (!stop) {
                    long r = port.receive(iov);
                    if (r > 0) {
                        counts.setRelease(q * 8, ++n);
                    } else if (r == -1) {
                        tap.backend().queueFd(q).poll(Fd.POLLIN, 100);
                    }
                }
            }
        }

        @Override
        Object sample() throws Exception {
            long[] c = new long[pairs];
            for (int i = 0; i < pairs; i++) {
                c[i] = counts.getAcquire(i * 8);
            }
            long[] cpu = threads.stream().mapToLong(t -> mx.getThreadCpuTime(t.threadId())).toArray();
            long kernelRx = writes ? tap.ns().rxPackets(tap.name()) : -1;
            long[] readerCpu = readers.stream().mapToLong(t -> mx.getThreadCpuTime(t.threadId())).toArray();
            return new Sample(System.nanoTime(), c, cpu, kernelRx, injector == null ? 0 : injector.sent(),
                    injector == null ? new long[0] : injector.cpu(), readerCpu);
        }

        @Override
        Measurement between(int size, Object x, Object y) {
            Sample a = (Sample) x;
            Sample b = (Sample) y;
            long done = 0;
            List<Measurement.ThreadCpu> cpu = new ArrayList<>();
            for (int i = 0; i < pairs; i++) {
                long n = b.counts()[i] - a.counts()[i];
                done += n;
                cpu.add(new Measurement.ThreadCpu(Measurement.RX, "syscall-q" + i, b.cpu()[i] - a.cpu()[i], n));
            }
            double seconds = (b.nanos() - a.nanos()) / 1e9;
            String note;
            long received;
            long sent;
            if (writes) {
                received = b.kernelRx() - a.kernelRx(); // what the kernel counted of the writes
                sent = done;
                note = "tap " + tap.name() + " in netns " + tap.ns().name() + " counted rx_packets +" + received
                        + (scenario == Scenario.WRITEV_TO_TAP ? "; one writev per frame"
                                : "; " + URING_BURST + " IORING_OP_WRITE_FIXED per io_uring_enter");
            } else {
                received = done;
                sent = b.sent() - a.sent();
                cpu.addAll(TapInjector.threadCpu(a.injectCpu(), b.injectCpu(), sent));
                for (int i = 0; i < Math.min(a.readerCpu().length, b.readerCpu().length); i++) {
                    cpu.add(new Measurement.ThreadCpu(Measurement.TX, "ring-reader-q" + i,
                            b.readerCpu()[i] - a.readerCpu()[i], b.counts()[i] - a.counts()[i]));
                }
                StringBuilder per = new StringBuilder();
                for (int i = 0; i < pairs; i++) {
                    per.append(String.format(Locale.ROOT, " %.3f", (b.counts()[i] - a.counts()[i]) / seconds / 1e6));
                }
                note = "tap " + tap.name() + " in netns " + tap.ns().name() + ", " + a.injectCpu().length
                        + " sender thread(s); " + (scenario == Scenario.TAP_TO_URING ? "up to " + URING_BURST
                        + " IORING_OP_READ_FIXED (RWF_NOWAIT) per io_uring_enter" : "one readv per frame")
                        + (scenario == Scenario.TAP_TO_READV_RING ? " into the next of " + RING_SLOTS
                                + " buffers, copied out by a reader on the driver's CPU" : "")
                        + "; per queue Mpps" + per;
            }
            return new Measurement(scenario, size, pairs, ring, Measurement.UNKNOWN, received, seconds, sent, seconds,
                    cpu, Measurement.Status.OK, note);
        }

        @Override
        void end() throws InterruptedException {
            stop = true;
            for (Thread t : threads) {
                t.join(5000);
            }
            threads.clear();
            for (Thread t : readers) {
                t.join(5000);
            }
            readers.clear();
            for (int i = 0; i < pairs * 16; i++) {
                ringCounts.set(i, 0); // the next size starts with an empty ring
            }
            if (injector != null) {
                injector.close();
                injector = null;
            }
        }

        @Override
        public void close() throws Exception {
            try {
                end();
            } finally {
                tap.close();
                ringArena.close();
            }
        }
    }

    /** DPDK's virtio-user, asked for the ring mode's layout and IN_ORDER. */
    private static String virtioUser(Path sock, int pairs, RingMode ring) {
        return "net_virtio_user0,path=" + sock + ",queues=" + pairs + (pairs > 1 ? ",cq=1" : "") + ring.virtioUserDevargs();
    }

    /** DPDK's vhost PMD: it offers both layouts and IN_ORDER, and takes what its frontend asks. */
    private static String vhost(Path sock, int pairs) {
        return "net_vhost0,iface=" + sock + ",queues=" + pairs;
    }

    /** Restarts a txonly testpmd with a new frame length. */
    private static void txonly(Testpmd t, int size) throws IOException {
        t.command("stop");
        t.command("set txpkts " + size);
        t.command("start");
    }

    /** Scenario 2: testpmd's virtio-user (txonly) into our backend. */
    private final class DpdkToBackend extends Session {
        private final int pairs;
        private final RingMode ring;
        private final NetDevice dev;
        private final VhostUserServer server;
        private final Testpmd tx;

        private record Sample(DeviceSample device, PmdSample pmd) {}

        DpdkToBackend(int pairs, RingMode ring, Path sock) throws Exception {
            this.pairs = pairs;
            this.ring = ring;
            NetDevice d = device(pairs, sink(pairs));
            VhostUserServer srv = null;
            try {
                srv = VhostUserServer.listen(sock, d);
                tx = Testpmd.start(testpmd, virtioUser(sock, pairs, ring), pairs, "txonly", 0, o.txCpus(),
                        log(Scenario.DPDK_TO_OURS, pairs, ring, "virtio-user"), 60);
            } catch (Exception | Error e) {
                if (srv != null) {
                    srv.close();
                }
                d.close();
                throw e;
            }
            dev = d;
            server = srv;
        }

        @Override
        void begin(int size) throws IOException {
            txonly(tx, size);
        }

        @Override
        Object sample() {
            DeviceSample d = DeviceSample.of(dev);
            return new Sample(d, PmdSample.of(tx));
        }

        @Override
        Measurement between(int size, Object x, Object y) {
            Sample a = (Sample) x;
            Sample b = (Sample) y;
            long sent = b.pmd().port().txPackets() - a.pmd().port().txPackets();
            List<Measurement.ThreadCpu> threads = new ArrayList<>();
            PmdSample.threads(Measurement.TX, a.pmd(), b.pmd(), sent, threads);
            DeviceSample.threads(a.device(), b.device(), threads);
            return new Measurement(Scenario.DPDK_TO_OURS, size, pairs, ring, deviceFeatures(dev),
                    DeviceSample.packets(a.device(), b.device()),
                    (b.device().nanos() - a.device().nanos()) / 1e9, sent, PmdSample.seconds(a.pmd(), b.pmd()), threads,
                    Measurement.Status.OK, sinkNote() + deviceErrors(dev) + "; testpmd log " + tx.log());
        }

        @Override
        public void close() {
            try {
                tx.close();
            } finally {
                try {
                    server.close();
                } finally {
                    dev.close();
                }
            }
        }
    }

    /** Scenario 3, the reference: testpmd virtio-user (txonly) into testpmd vhost (rxonly). */
    private final class DpdkToDpdk extends Session {
        private final int pairs;
        private final RingMode ring;
        private final Testpmd rx;
        private final Testpmd tx;

        private record Sample(PmdSample rx, PmdSample tx) {}

        DpdkToDpdk(int pairs, RingMode ring, Path sock) throws Exception {
            this.pairs = pairs;
            this.ring = ring;
            rx = Testpmd.start(testpmd, vhost(sock, pairs), pairs, "rxonly", 0, o.rxCpus(),
                    log(Scenario.DPDK_TO_DPDK, pairs, ring, "vhost"), 60);
            try {
                rx.command("start");
                tx = Testpmd.start(testpmd, virtioUser(sock, pairs, ring), pairs, "txonly", 0, o.txCpus(),
                        log(Scenario.DPDK_TO_DPDK, pairs, ring, "virtio-user"), 60);
            } catch (Exception | Error e) {
                rx.close();
                throw e;
            }
        }

        @Override
        void begin(int size) throws IOException {
            txonly(tx, size);
        }

        @Override
        Object sample() {
            PmdSample r = PmdSample.of(rx);
            return new Sample(r, PmdSample.of(tx));
        }

        @Override
        Measurement between(int size, Object x, Object y) {
            Sample a = (Sample) x;
            Sample b = (Sample) y;
            long packets = b.rx().port().rxPackets() - a.rx().port().rxPackets();
            long sent = b.tx().port().txPackets() - a.tx().port().txPackets();
            List<Measurement.ThreadCpu> threads = new ArrayList<>();
            PmdSample.threads(Measurement.TX, a.tx(), b.tx(), sent, threads);
            PmdSample.threads(Measurement.RX, a.rx(), b.rx(), packets, threads);
            // the vhost side's log says what its frontend set; without that line the row says what was asked for
            long features = rx.negotiatedFeatures();
            return new Measurement(Scenario.DPDK_TO_DPDK, size, pairs, ring, features < 0 ? Measurement.UNKNOWN : virtio(features),
                    packets, PmdSample.seconds(a.rx(), b.rx()), sent, PmdSample.seconds(a.tx(), b.tx()), threads,
                    Measurement.Status.OK, "testpmd logs " + tx.log() + ", " + rx.log());
        }

        @Override
        public void close() {
            try {
                tx.close();
            } finally {
                rx.close();
            }
        }
    }

    /** Scenario 4: our driver into testpmd's vhost (rxonly). */
    private final class DriverToDpdk extends Session {
        private final int pairs;
        private final RingMode ring;
        private final Testpmd rx;
        private final NetDriver nic;
        private TrafficRun.Running traffic;

        private record Sample(TrafficRun.Snapshot driver, PmdSample pmd) {}

        @Override
        void dirtyLog(boolean on) {
            nic.setDirtyLog(on);
        }

        DriverToDpdk(int pairs, RingMode ring, Path sock) throws Exception {
            this.pairs = pairs;
            this.ring = ring;
            rx = Testpmd.start(testpmd, vhost(sock, pairs), pairs, "rxonly", 0, o.rxCpus(),
                    log(Scenario.OURS_TO_DPDK, pairs, ring, "vhost"), 60);
            try {
                rx.command("start");
                nic = NetDriver.connect(sock, driverOptions(pairs, ring));
            } catch (Exception | Error e) {
                rx.close();
                throw e;
            }
        }

        @Override
        void begin(int size) {
            traffic = TrafficRun.start(nic, pairs, TrafficRun.Mode.TX_ONLY, size, o.txCpus());
        }

        @Override
        Object sample() {
            TrafficRun.Snapshot t = traffic.sample();
            return new Sample(t, PmdSample.of(rx));
        }

        @Override
        Measurement between(int size, Object x, Object y) {
            Sample a = (Sample) x;
            Sample b = (Sample) y;
            TrafficRun.Result r = TrafficRun.between(a.driver(), b.driver());
            long packets = b.pmd().port().rxPackets() - a.pmd().port().rxPackets();
            List<Measurement.ThreadCpu> threads = new ArrayList<>();
            driverThreads(r, threads);
            PmdSample.threads(Measurement.RX, a.pmd(), b.pmd(), packets, threads);
            String note = "testpmd log " + rx.log();
            long theirs = rx.negotiatedFeatures(); // DPDK's vhost logs what we set: both ends must agree
            if (theirs >= 0 && virtio(theirs) != nic.features()) {
                note += "; testpmd's vhost saw features 0x" + Long.toHexString(virtio(theirs)) + ", the driver 0x"
                        + Long.toHexString(nic.features());
            }
            return new Measurement(Scenario.OURS_TO_DPDK, size, pairs, ring, nic.features(), packets,
                    PmdSample.seconds(a.pmd(), b.pmd()), r.txPackets(), r.seconds(), threads, Measurement.Status.OK, note);
        }

        @Override
        void end() throws InterruptedException {
            if (traffic != null) {
                traffic.close();
                traffic = null;
            }
        }

        @Override
        public void close() throws Exception {
            try {
                end();
                nic.close();
            } finally {
                rx.close();
            }
        }
    }

    private static void deleteTree(Path dir) {
        try (Stream<Path> s = Files.walk(dir)) {
            for (Path p : s.sorted(Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(p);
            }
        } catch (IOException ignored) {
            // best effort
        }
    }
}
