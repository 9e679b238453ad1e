package io.mqvirtio.capture;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.NetDriver;
import io.mqvirtio.net.NetQueuePair;
import io.mqvirtio.vhostuser.LogCapture;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * {@code serve --capture} on a disk that misbehaves ({@link FaultyFs}, a real FUSE file system): one whose writes
 * never return (a dead NFS server), crawl, or fail (EIO, ENOSPC). The guest's frames go through at the speed they
 * went with the disk well, all of them; only the capture loses frames, each counted, each loss said once; and
 * closing is bounded whatever the disk does.
 */
class CaptureDiskFaultTest {
    private static final int PAIRS = 2;
    private static final int FRAMES = 3000; // per pair and phase, 1500 bytes each: 4.5 MB out and 4.5 MB back
    private Path dir;
    private FaultyFs fs;
    private LogCapture log;

    @BeforeEach
    void mount() throws Exception {
        dir = Files.createTempDirectory("capture-disk");
        log = new LogCapture("io.mqvirtio.capture", Level.INFO);
        fs = FaultyFs.mount(dir);
    }

    @AfterEach
    void unmount() throws Exception {
        if (log != null) {
            log.close();
        }
        if (fs != null) {
            fs.close();
        }
        try (var files = Files.walk(dir)) {
            files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        }
    }

    /** Sends {@link #FRAMES} frames on each pair and takes each back (the loopback); the nanoseconds it took. */
    private static long traffic(NetDriver nic, Arena a) {
        long t0 = System.nanoTime();
        for (int p = 0; p < PAIRS; p++) {
            NetQueuePair q = nic.pair(p);
            MemorySegment f = CaptureTest.frame(a, p, 1, 1500);
            MemorySegment[] bufs = {a.allocate(2048), a.allocate(2048), a.allocate(2048), a.allocate(2048)};
            int[] lens = new int[bufs.length];
            int sent = 0;
            int got = 0;
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (got < FRAMES && System.nanoTime() < deadline) {
                while (sent < FRAMES && sent - got < 64 && q.send(f) == 1) {
                    sent++;
                }
                q.awaitReceive(10);
                got += q.receive(bufs, lens, bufs.length);
            }
            assertThat(got).as("frames through pair %d", p).isEqualTo(FRAMES);
        }
        return System.nanoTime() - t0;
    }

    private boolean closed;

    /** Closes {@code device} on a thread of its own; how long it took (fails if it has not returned in 30 s). */
    private long closeTimed(NetDevice device) throws InterruptedException {
        closed = true;
        long t0 = System.nanoTime();
        Thread t = Thread.ofPlatform().daemon().start(device::close);
        assertThat(t.join(java.time.Duration.ofSeconds(30))).as("the device's close returned").isTrue();
        return System.nanoTime() - t0;
    }

    private List<String> lines(String containing) {
        return log.lines().stream().filter(l -> l.contains(containing)).toList();
    }

    /**
     * Writes that never return (the disk hangs after the capture started): the frames go through as fast as before,
     * all of them; the capture counts every frame it left out (captured + left out = every frame each way), says
     * once per pair that its disk does not keep up, and the device's close returns within
     * {@link QueueCapture#CLOSE_WAIT} for all its pairs together. Before, close interrupted the writer stuck in its
     * write, and a FileChannel interrupted (or closed) waits for the threads in its writes: close never returned.
     */
    @Test
    @Timeout(value = 180, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
    void aDiskThatHangsCostsTheTrafficNothingAndClosingIsBounded() throws Exception {
        Path caps = Files.createDirectory(fs.mount().resolve("caps"));
        NetDevice device = new NetDevice(NetDevice.Config.of("hang", PAIRS), new LoopbackBackend(PAIRS, 1500));
        try (VhostUserServer server = VhostUserServer.listen(dir.resolve("hang.sock"), device)) {
            List<QueueCapture> cap = device.startCapture(caps, QueueCapture.DEFAULT_SNAPLEN, 1L << 30);
            long well;
            long hung;
            try (NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(PAIRS));
                 Arena a = Arena.ofConfined()) {
                traffic(nic, a); // warm-up
                well = traffic(nic, a);
                fs.mode("hang");
                hung = traffic(nic, a);
                traffic(nic, a); // by now every writer is in a write that does not return, and the queues are full
            }
            assertThat(hung).as("the traffic with the disk hung (ns), against %d with it well", well)
                    .isLessThan(3 * well + TimeUnit.SECONDS.toNanos(1));
            long closing = closeTimed(device);
            assertThat(closing).as("closing (ns)").isLessThan(QueueCapture.CLOSE_WAIT.toNanos()
                    + TimeUnit.SECONDS.toNanos(2));
            for (QueueCapture c : cap) {
                assertThat(c.captured() + c.dropped()).as("%s: every frame in the file or counted", c.file())
                        .isEqualTo(4L * 2 * FRAMES);
                assertThat(c.dropped()).isPositive();
            }
        } finally {
            if (!closed) {
                device.close();
            }
        }
        for (int p = 0; p < PAIRS; p++) {
            String name = "hang-qp" + p + ".pcapng";
            assertThat(lines(name + ": its disk does not keep up")).hasSize(1);
            assertThat(lines(name + ": ")).filteredOn(l -> l.contains(" left out (")).hasSize(1)
                    .allSatisfy(l -> assertThat(l).contains("did not answer within the wait for closing"));
        }
    }

    /**
     * Writes that crawl (a disk far slower than the traffic): the traffic is not slowed; the frames the queue had no
     * room for are counted and said once; closing is bounded; and the file holds at least every frame counted in it,
     * readable (tshark) once the last write is done.
     */
    @Test
    @Timeout(value = 180, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
    void aDiskThatCrawlsCostsTheTrafficNothing() throws Exception {
        Path caps = Files.createDirectory(fs.mount().resolve("caps"));
        NetDevice device = new NetDevice(NetDevice.Config.of("crawl", PAIRS), new LoopbackBackend(PAIRS, 1500));
        List<QueueCapture> cap;
        try (VhostUserServer server = VhostUserServer.listen(dir.resolve("crawl.sock"), device)) {
            cap = device.startCapture(caps, QueueCapture.DEFAULT_SNAPLEN, 1L << 30);
            long well;
            long slow;
            try (NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(PAIRS));
                 Arena a = Arena.ofConfined()) {
                traffic(nic, a);
                well = traffic(nic, a);
                fs.mode("crawl 200");
                slow = traffic(nic, a);
                traffic(nic, a);
            }
            assertThat(slow).as("the traffic with the disk crawling (ns), against %d with it well", well)
                    .isLessThan(3 * well + TimeUnit.SECONDS.toNanos(1));
            long closing = closeTimed(device);
            assertThat(closing).as("closing (ns)").isLessThan(QueueCapture.CLOSE_WAIT.toNanos()
                    + TimeUnit.SECONDS.toNanos(2));
        } finally {
            if (!closed) {
                device.close();
            }
        }
        fs.mode("ok");
        for (int p = 0; p < PAIRS; p++) {
            QueueCapture c = cap.get(p);
            assertThat(c.captured() + c.dropped()).isEqualTo(4L * 2 * FRAMES);
            assertThat(c.dropped()).isPositive();
            assertThat(lines("crawl-qp" + p + ".pcapng: its disk does not keep up")).hasSize(1);
            Path file = fs.backing().resolve("caps").resolve("crawl-qp" + p + ".pcapng");
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
            List<String> rows = tshark(file);
            while (rows.size() < c.captured() && System.nanoTime() < deadline) { // a write left behind ends
                Thread.sleep(100);
                rows = tshark(file);
            }
            assertThat((long) rows.size()).as("frames in the file").isGreaterThanOrEqualTo(c.captured());
        }
    }

    /**
     * Writes that fail (EIO; ENOSPC, a full disk) once the capture runs: the traffic goes on as fast, the writer
     * stops at its first failure with one line saying why, every frame after is counted as left out, and closing
     * does not wait (the writer closed the file when it stopped).
     */
    @ParameterizedTest
    @CsvSource({"eio,Input/output error", "enospc,No space left on device"})
    @Timeout(value = 180, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
    void aDiskThatFailsStopsTheCaptureOnceAndCountsTheRest(String mode, String error) throws Exception {
        Path caps = Files.createDirectory(fs.mount().resolve("caps"));
        NetDevice device = new NetDevice(NetDevice.Config.of(mode, PAIRS), new LoopbackBackend(PAIRS, 1500));
        try (VhostUserServer server = VhostUserServer.listen(dir.resolve(mode + ".sock"), device)) {
            List<QueueCapture> cap = device.startCapture(caps, QueueCapture.DEFAULT_SNAPLEN, 1L << 30);
            long well;
            long failing;
            try (NetDriver nic = NetDriver.connect(server.path(), NetDriver.Options.pairs(PAIRS));
                 Arena a = Arena.ofConfined()) {
                traffic(nic, a);
                well = traffic(nic, a);
                fs.mode(mode);
                failing = traffic(nic, a);
                traffic(nic, a);
            }
            assertThat(failing).isLessThan(3 * well + TimeUnit.SECONDS.toNanos(1));
            assertThat(closeTimed(device)).as("closing (ns)").isLessThan(TimeUnit.SECONDS.toNanos(2));
            for (QueueCapture c : cap) {
                assertThat(c.captured() + c.dropped()).isEqualTo(4L * 2 * FRAMES);
                assertThat(c.dropped()).isGreaterThanOrEqualTo(2L * FRAMES); // the last phase at least
            }
        } finally {
            if (!closed) {
                device.close();
            }
        }
        for (int p = 0; p < PAIRS; p++) {
            assertThat(lines(mode + "-qp" + p + ".pcapng: cannot write")).hasSize(1)
                    .allSatisfy(l -> assertThat(l).contains(error));
        }
    }

    private static List<String> tshark(Path file) throws Exception {
        Process p = new ProcessBuilder("tshark", "-r", file.toString(), "-T", "fields", "-e", "frame.len")
                .redirectError(ProcessBuilder.Redirect.DISCARD).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertThat(p.waitFor(60, TimeUnit.SECONDS)).isTrue();
        return new ArrayList<>(out.lines().filter(l -> !l.isBlank()).toList());
    }
}
