package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.net.NetDriver;
import io.mqvirtio.net.NetQueuePair;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** {@code mqvirtio serve --capture DIR}: a file per queue pair that tshark reads, written until serve stops. */
class ServeCaptureTest {
    @TempDir
    Path dir;

    @Test
    @Timeout(120)
    void serveWritesAPcapngPerQueuePairThatTsharkReads() throws Exception {
        Path sock = dir.resolve("cap.sock");
        Path out = dir.resolve("captures"); // made by serve, 0700
        try (Launcher.Run r = Launcher.start(dir, "serve", Launcher.command("serve", "--socket-path", sock.toString(),
                "--loopback", "--queues", "2", "--capture", out.toString(), "--capture-snaplen", "100", "--metrics",
                "127.0.0.1:0"))) {
            int port = Integer.parseInt(r.awaitErr("metrics on http://127\\.0\\.0\\.1:(\\d+)/metrics", 30_000));
            r.awaitErr("listening on", 30_000);
            assertThat(r.stderr()).contains("cap.sock: capturing 2 queue pairs to " + out.resolve("cap.sock-qp*.pcapng"));
            try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(2)); Arena a = Arena.ofConfined()) {
                for (int p = 0; p < 2; p++) {
                    NetQueuePair q = nic.pair(p);
                    MemorySegment f = io.mqvirtio.capture.CaptureTest.frame(a, p, 7, 300);
                    for (int i = 0; i < 10; i++) {
                        q.send(f);
                    }
                    MemorySegment[] bufs = {a.allocate(2048), a.allocate(2048)};
                    int[] lens = new int[2];
                    int got = 0;
                    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
                    while (got < 10 && System.nanoTime() < deadline) {
                        q.awaitReceive(100);
                        got += q.receive(bufs, lens, 2);
                    }
                    assertThat(got).isEqualTo(10);
                }
            }
            // each pair's capture in the metrics and /stats: 20 frames written (10 each way), none dropped
            String written = "mqvirtio_capture_frames_total{device=\"cap.sock\",queue=\"%d\",result=\"%s\"} %s";
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            String body = Launcher.get("127.0.0.1", port, "/metrics").body();
            while (!body.contains(written.formatted(1, "written", "20.0")) && System.nanoTime() < deadline) {
                Thread.sleep(100); // the writers count a frame once it is in the file
                body = Launcher.get("127.0.0.1", port, "/metrics").body();
            }
            for (int p = 0; p < 2; p++) {
                assertThat(body).contains(written.formatted(p, "written", "20.0"), written.formatted(p, "dropped", "0.0"));
            }
            DeviceStats d = Stats.Sample.parse(Launcher.get("127.0.0.1", port, "/stats").body()).devices().getFirst();
            assertThat(d.captures()).containsExactly(new DeviceStats.Capture(0, 20, 0), new DeviceStats.Capture(1, 20, 0));
            try (Launcher.Run s = Launcher.runToEnd(dir, "stats", 30_000, "stats", "--from", "127.0.0.1:" + port)) {
                assertThat(s.exit(1000)).as(s.stderr()).isZero();
                assertThat(s.stdout()).contains("capture qp0: 20 frames written, 0 dropped\n")
                        .contains("capture qp1: 20 frames written, 0 dropped\n");
            }
            r.process().destroy(); // SIGTERM: the files are complete once serve has exited
            assertThat(r.exit(15_000)).as(r.stderr()).isZero();
            assertThat(r.stderr()).contains("cap.sock-qp0.pcapng: 20 frames").contains("cap.sock-qp1.pcapng: 20 frames");
        }
        assertThat(Files.getPosixFilePermissions(out)).isEqualTo(PosixFilePermissions.fromString("rwx------"));
        for (int p = 0; p < 2; p++) {
            Process t = new ProcessBuilder("tshark", "-r", out.resolve("cap.sock-qp" + p + ".pcapng").toString(), "-T",
                    "fields", "-E", "separator=,", "-e", "frame.len", "-e", "frame.cap_len", "-e", "eth.src")
                    .redirectError(ProcessBuilder.Redirect.DISCARD).start();
            String rows = new String(t.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            assertThat(t.waitFor(60, TimeUnit.SECONDS)).isTrue();
            String mac = "02:00:00:00:0" + p + ":07";
            assertThat(rows.lines().toList()).hasSize(20).allSatisfy(l -> assertThat(l).isEqualTo("300,100," + mac));
        }
    }

    /** {@code --capture} beside {@code --vm}s is every VM's: each writes its own files there, named after it. */
    @Test
    @Timeout(60)
    void captureBesideVmSpecsIsEveryVms() throws Exception {
        Path out = dir.resolve("all");
        try (Launcher.Run r = Launcher.start(dir, "serve2", Launcher.command("serve", "--vm",
                "socket-path=" + dir.resolve("a.sock") + ",loopback,name=a", "--vm",
                "socket-path=" + dir.resolve("b.sock") + ",loopback,queues=2,name=b", "--capture", out.toString()))) {
            r.awaitErr("listening on .*b\\.sock", 30_000);
            assertThat(r.stderr()).contains("a: capturing 1 queue pair to").contains("b: capturing 2 queue pairs to");
            r.process().destroy();
            assertThat(r.exit(15_000)).as(r.stderr()).isZero();
        }
        assertThat(out.resolve("a-qp0.pcapng")).isRegularFile();
        assertThat(out.resolve("b-qp1.pcapng")).isRegularFile();
    }

    /**
     * A capture directory that another user may change (world-writable without the sticky bit, or someone else's)
     * is refused, with why: they could swap or remove the captures. Ours, a group one, or a sticky one (as /tmp) is
     * used; serve refuses before it listens.
     */
    @Test
    @Timeout(30)
    void aCaptureDirectoryOthersMayChangeIsRefused() throws Exception {
        Path open = Files.createDirectory(dir.resolve("open"));
        Files.setPosixFilePermissions(open, PosixFilePermissions.fromString("rwxrwxrwx"));
        assertThat(Serve.Running.unsafeCaptureDirectory(open)).contains("may be written by any user (mode 777)");
        Files.setAttribute(open, "unix:mode", 01777);
        assertThat(Serve.Running.unsafeCaptureDirectory(open)).isNull();
        Files.setPosixFilePermissions(open, PosixFilePermissions.fromString("rwxrwx---"));
        assertThat(Serve.Running.unsafeCaptureDirectory(open)).isNull();
        Path link = Files.createSymbolicLink(dir.resolve("link"), open); // the directory behind the link counts
        Files.setPosixFilePermissions(open, PosixFilePermissions.fromString("rwxrwxrwx"));
        assertThat(Serve.Running.unsafeCaptureDirectory(link)).contains("may be written by any user");
        if ((Integer) Files.getAttribute(Path.of("/proc/self"), "unix:uid") == 0) {
            Path theirs = Files.createDirectory(dir.resolve("theirs"));
            Files.setAttribute(theirs, "unix:uid", 65534);
            assertThat(Serve.Running.unsafeCaptureDirectory(theirs)).contains("belongs to user 65534");
        }
        Launcher.Run r = Launcher.start(dir, "unsafe", Launcher.command("serve", "--socket-path",
                dir.resolve("r.sock").toString(), "--loopback", "--capture", open.toString()));
        try (r) {
            assertThat(r.exit(15_000)).as(r.stderr()).isEqualTo(1);
        }
        assertThat(r.stderr()).contains("--capture " + open).contains("may be written by any user");
        assertThat(dir.resolve("r.sock")).doesNotExist();
        try (var files = Files.list(open)) {
            assertThat(files.toList()).isEmpty();
        }
    }

    /** Whether the process whose /proc/PID/stat is {@code stat} has exited (its leader a zombie, or gone). */
    private static boolean exited(Path stat) {
        try {
            String st = Files.readString(stat);
            return st.substring(st.lastIndexOf(')') + 2).startsWith("Z");
        } catch (java.io.IOException e) {
            return true;
        }
    }

    /** Sends {@code n} frames on each of {@code pairs} pairs of the VM at {@code sock} and takes each back. */
    private static void loop(Path sock, int pairs, int n) throws Exception {
        try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(pairs)); Arena a = Arena.ofConfined()) {
            for (int p = 0; p < pairs; p++) {
                NetQueuePair q = nic.pair(p);
                MemorySegment f = io.mqvirtio.capture.CaptureTest.frame(a, p, 7, 1500);
                MemorySegment[] bufs = {a.allocate(2048), a.allocate(2048)};
                int[] lens = new int[2];
                int sent = 0;
                int got = 0;
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
                while (got < n && System.nanoTime() < deadline) {
                    while (sent < n && sent - got < 32 && q.send(f) == 1) {
                        sent++;
                    }
                    q.awaitReceive(10);
                    got += q.receive(bufs, lens, 2);
                }
                assertThat(got).isEqualTo(n);
            }
        }
    }

    /**
     * SIGTERM while the capture disk has stopped answering (its server frozen, as a dead NFS server: writes and
     * close(2) wait killably, for good), two VMs of four queue pairs each, every pair's writer stuck in a write: serve
     * waits for all the captures together, 5 s at most ({@code QueueCapture.CLOSE_WAIT}), says of each what was
     * lost, and exits 0 well within systemd's stop timeout. Before, each capture's close interrupted its writer, and
     * a FileChannel interrupted waits for the threads in its writes: serve never exited (and with a disk merely slow,
     * 1 s + 5 s a pair in turn).
     */
    @Test
    @Timeout(value = 120, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
    void stopIsBoundedWhenTheCaptureDiskHangs() throws Exception {
        Path fsDir = Files.createTempDirectory("serve-capture-disk");
        try (io.mqvirtio.capture.FaultyFs fs = io.mqvirtio.capture.FaultyFs.mount(fsDir)) {
            Path out = Files.createDirectory(fs.mount().resolve("caps"));
            try (Launcher.Run r = Launcher.start(dir, "hang", Launcher.command("serve", "--vm",
                    "socket-path=" + dir.resolve("a.sock") + ",loopback,queues=4,name=a", "--vm",
                    "socket-path=" + dir.resolve("b.sock") + ",loopback,queues=4,name=b", "--capture",
                    out.toString()))) {
                r.awaitErr("listening on .*b\\.sock", 30_000);
                loop(dir.resolve("a.sock"), 4, 50);
                loop(dir.resolve("b.sock"), 4, 50);
                Thread.sleep(1000); // the writers idle (each flushed), no request in the daemon's hands
                fs.freeze();
                loop(dir.resolve("a.sock"), 4, 50); // each writer now waits in a write that never returns
                loop(dir.resolve("b.sock"), 4, 50);
                Thread.sleep(500);
                r.process().destroy();
                // serve exits within 10 s; but a FUSE file open in a process keeps it from ending (the kernel flushes
                // it at exit, and waits for the daemon) until the daemon answers: the JVM's main thread has ended
                // (a zombie leader), the writers' threads wait in the kernel
                Path stat = Path.of("/proc/" + r.process().pid() + "/stat");
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
                while (r.process().isAlive() && !exited(stat) && System.nanoTime() < deadline) {
                    Thread.sleep(50);
                }
                assertThat(!r.process().isAlive() || exited(stat)).as("serve exited within 10 s of SIGTERM:\n%s",
                        r.stderr()).isTrue();
                fs.thaw();
                assertThat(r.exit(10_000)).as(r.stderr()).isZero();
                for (String vm : new String[] {"a", "b"}) {
                    for (int p = 0; p < 4; p++) {
                        String name = vm + "-qp" + p + ".pcapng: ";
                        assertThat(r.stderr().lines().filter(l -> l.contains(name)
                                && l.contains("did not answer within the wait for closing")).count()).as(r.stderr())
                                .isEqualTo(1);
                    }
                }
            }
        } finally {
            try (var files = Files.walk(fsDir)) {
                files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }

    /**
     * Start with the capture disk not answering (its server frozen: every call into it, the directory's stat
     * included, never returns): serve's
     * start fails within 5 s of the capture's start with why, and exits 1, rather than never listening and never
     * answering SIGTERM (the start held the main thread, and a stop waits for the start).
     */
    @Test
    @Timeout(value = 120, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
    void startOnACaptureDiskThatHangsFailsWithinBounds() throws Exception {
        Path fsDir = Files.createTempDirectory("serve-capture-disk");
        try (io.mqvirtio.capture.FaultyFs fs = io.mqvirtio.capture.FaultyFs.mount(fsDir)) {
            Path out = fs.mount().resolve("caps");
            fs.freeze();
            Launcher.Run r = Launcher.start(dir, "hangall", Launcher.command("serve", "--socket-path",
                    dir.resolve("h.sock").toString(), "--loopback", "--queues", "2", "--capture", out.toString()));
            try (r) {
                assertThat(r.exit(30_000)).as(r.stderr()).isEqualTo(1);
            }
            assertThat(r.stderr()).contains("--capture " + out).contains("did not answer within 5 s");
            assertThat(dir.resolve("h.sock")).doesNotExist();
        } finally {
            try (var files = Files.walk(fsDir)) {
                files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }

    /**
     * SIGTERM while serve starts its VMs, one VM's capture waiting on a slow disk: serve starts no VM after it, tells
     * systemd nothing of readiness, and stops. Before, the start went on through every VM (each up to 5 s on such a
     * disk: with many VMs, past systemd's TimeoutStopSec, and SIGKILL) and then told systemd READY=1.
     */
    @Test
    @Timeout(value = 120, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
    void sigtermWhileVmsStartStartsNoMoreOfThem() throws Exception {
        Path fsDir = Files.createTempDirectory("serve-capture-disk");
        Path notify = dir.resolve("start.notify");
        try (io.mqvirtio.capture.FaultyFs fs = io.mqvirtio.capture.FaultyFs.mount(fsDir);
                io.mqvirtio.linux.SdNotify.Listener systemd = io.mqvirtio.linux.SdNotify.Listener.bind(notify.toString())) {
            Path out = Files.createDirectory(fs.mount().resolve("caps"));
            fs.freeze();
            java.util.List<String> cmd = new java.util.ArrayList<>(java.util.List.of("env", "NOTIFY_SOCKET=" + notify));
            cmd.addAll(Launcher.command("serve",
                    "--vm", "socket-path=" + dir.resolve("a.sock") + ",loopback,name=a",
                    "--vm", "socket-path=" + dir.resolve("b.sock") + ",loopback,name=b,capture=" + out,
                    "--vm", "socket-path=" + dir.resolve("c.sock") + ",loopback,name=c"));
            try (Launcher.Run r = Launcher.start(dir, "start", cmd)) {
                r.awaitErr("listening on .*a\\.sock", 30_000);
                Thread.sleep(300); // b's capture waits on the disk
                r.process().destroy();
                Thread.sleep(300);
                fs.thaw(); // b's capture starts, within its 5 s
                assertThat(r.exit(30_000)).as(r.stderr()).isZero();
                assertThat(r.stderr()).as("a VM started after SIGTERM").doesNotContainPattern("listening on .*c\\.sock");
                assertThat(r.stderr()).contains("a: stopped (SIGTERM)").doesNotContain("\tat ");
            }
            String told = systemd.receive(1000);
            assertThat(told).as("what systemd was told").isEqualTo("STOPPING=1");
        } finally {
            try (var files = Files.walk(fsDir)) {
                files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }
}
