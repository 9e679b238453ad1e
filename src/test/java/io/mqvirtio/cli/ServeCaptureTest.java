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
                "--loopback", "--queues", "2", "--capture", out.toString(), "--capture-snaplen", "100"))) {
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
}
