package io.mqvirtio.linux;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

@Timeout(10)
class UnixSocketTest {
    private Path dir;
    private Path path;
    private final Arena arena = Arena.ofConfined();

    @BeforeEach
    void makeDir() throws Exception {
        dir = Files.createTempDirectory("mqv-sock");
        path = dir.resolve("s.sock");
    }

    @AfterEach
    void cleanUp() throws Exception {
        arena.close();
        Files.deleteIfExists(path);
        Files.deleteIfExists(dir);
    }

    /**
     * The control buffer is rounded up to 8 bytes: room for 7 descriptors takes 8. The eighth must not be accepted
     * (found by fuzzing: a message then held 9 and the next read's room went negative); all of them are closed.
     */
    @Test
    void oneDescriptorMoreThanAskedForIsRefusedToo() throws Exception {
        try (UnixSocket.Pair p = UnixSocket.pair(); EventFd e = EventFd.create()) {
            int[] eight = {e.fd(), e.fd(), e.fd(), e.fd(), e.fd(), e.fd(), e.fd(), e.fd()};
            p.first().send(bytes("x"), eight);
            long before = openFds();
            assertThatThrownBy(() -> p.second().recv(arena.allocate(1), 7)).isInstanceOf(ErrnoException.class)
                    .satisfies(x -> assertThat(((ErrnoException) x).errno()).isEqualTo(ErrnoException.EMSGSIZE));
            assertThat(openFds()).isEqualTo(before);
        }
    }


    /** Connects to the listener at {@link #path} until its backlog is full (the next connect: EAGAIN). */
    private void fillBacklog(java.util.List<UnixSocket> queued) {
        while (true) {
            try {
                queued.add(UnixSocket.connect(path, 50));
            } catch (ErrnoException e) {
                assertThat(e.errno()).isEqualTo(ErrnoException.EAGAIN);
                return;
            }
            assertThat(queued.size()).isLessThan(100);
        }
    }

    /** A listener that never accepts, its backlog full: a connect to it waits no longer than asked, then says so. */
    @Test
    void connectToAListenerThatNeverAcceptsIsBounded() throws Exception {
        java.util.List<UnixSocket> queued = new java.util.ArrayList<>();
        try (UnixSocket l = UnixSocket.listen(path, 0)) {
            fillBacklog(queued);
            long t0 = System.nanoTime();
            assertThatThrownBy(() -> UnixSocket.connect(path, 300)).isInstanceOf(ErrnoException.class)
                    .hasMessageContaining("accepted nothing within 300 ms");
            long ms = (System.nanoTime() - t0) / 1_000_000;
            assertThat(ms).isBetween(250L, 2000L);
            // once it accepts, a connect goes through, and the socket is blocking again
            l.accept().close();
            try (UnixSocket c = UnixSocket.connect(path, 1000)) {
                assertThat(c.isNonBlocking()).isFalse();
            }
        } finally {
            queued.forEach(UnixSocket::close);
        }
    }

    /**
     * The longest wait a caller can ask for (Long.MAX_VALUE ms, "no limit" to many a Java caller) waits for the
     * listener to accept, and for a directory's lock to be let go: the milliseconds were multiplied into nanoseconds,
     * which overflowed (to -10^6 for Long.MAX_VALUE, and for anything above about 292 years) into a deadline already
     * past, so the first EAGAIN failed the call at once.
     */
    @Test
    void theLongestTimeoutsWaitForTheListenerAndTheLock() throws Exception {
        java.util.List<UnixSocket> queued = new java.util.ArrayList<>();
        try (UnixSocket l = UnixSocket.listen(path, 0)) {
            fillBacklog(queued);
            Thread accepter = Thread.ofPlatform().daemon().start(() -> {
                sleep(300);
                l.accept().close();
            });
            try (UnixSocket c = UnixSocket.connect(path, Long.MAX_VALUE)) {
                assertThat(c.isNonBlocking()).isFalse();
            }
            accepter.join(5000);
        } finally {
            queued.forEach(UnixSocket::close);
        }
        Fd held = Fd.lockDirectory(dir.toString(), 0);
        Thread releaser = Thread.ofPlatform().daemon().start(() -> {
            sleep(300);
            held.close();
        });
        try (Fd mine = Fd.lockDirectory(dir.toString(), Long.MAX_VALUE / 1000)) {
            assertThat(held.isOpen()).isFalse();
        } finally {
            releaser.join(5000);
            held.close();
        }
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            throw new IllegalStateException(e);
        }
    }

    private MemorySegment bytes(String s) {
        return arena.allocateFrom(s).asSlice(0, s.length()); // without the NUL
    }

    @Test
    void passesBytesAndWorkingDescriptors() throws Exception {
        try (UnixSocket server = UnixSocket.listen(path, 4);
                UnixSocket client = UnixSocket.connect(path);
                UnixSocket conn = server.accept();
                EventFd kick = EventFd.create();
                MemFd mem = MemFd.create("mqv-test", 4096);
                Mmap mine = Mmap.shared(mem, 0, 4096)) {
            assertThat(client.send(bytes("hello"), kick.fd(), mem.fd())).isEqualTo(5);

            MemorySegment buf = arena.allocate(64);
            UnixSocket.Received r = conn.recv(buf, 8);
            assertThat(r.bytes()).isEqualTo(5);
            assertThat(buf.asSlice(0, 5).toArray(ValueLayout.JAVA_BYTE))
                    .isEqualTo("hello".getBytes(StandardCharsets.US_ASCII));
            assertThat(r.fds()).hasSize(2).doesNotContain(kick.fd(), mem.fd());

            try (EventFd theirKick = EventFd.adopt(r.fds()[0]); Fd theirMem = Fd.adopt(r.fds()[1]);
                    Mmap theirs = Mmap.shared(theirMem, 0, 4096)) {
                assertThat(isCloseOnExec(theirKick)).isTrue();
                theirKick.signal();
                theirKick.signal();
                assertThat(kick.drain()).isEqualTo(2); // same eventfd object behind both numbers

                theirs.segment().set(ValueLayout.JAVA_LONG, 1024, 0xfeed_face_cafe_beefL);
                assertThat(mine.segment().get(ValueLayout.JAVA_LONG, 1024)).isEqualTo(0xfeed_face_cafe_beefL);
            }
        }
    }

    private static boolean isCloseOnExec(Fd fd) throws Exception {
        String info = Files.readString(Path.of("/proc/self/fdinfo/" + fd.fd()));
        String flags = info.lines().filter(l -> l.startsWith("flags:")).findFirst().orElseThrow();
        return (Integer.parseInt(flags.substring(6).trim(), 8) & 02000000) != 0;
    }

    @Test
    void heapSegmentsAndLargeMessagesGoThroughWhole() throws Exception {
        try (UnixSocket.Pair p = UnixSocket.pair()) {
            byte[] big = new byte[1 << 20]; // more than a socket buffer: the sender loops over partial writes
            for (int i = 0; i < big.length; i++) {
                big[i] = (byte) (i * 31);
            }
            Thread sender = Thread.ofPlatform().start(() -> p.first().send(MemorySegment.ofArray(big)));
            byte[] got = new byte[big.length];
            int at = 0;
            while (at < got.length) {
                UnixSocket.Received r = p.second().recv(MemorySegment.ofArray(got).asSlice(at), 0);
                assertThat(r.bytes()).isPositive();
                at += (int) r.bytes();
            }
            assertThat(got).isEqualTo(big);
            sender.join();
        }
    }

    @Test
    void endOfStreamReadsZero() {
        try (UnixSocket.Pair p = UnixSocket.pair()) {
            p.first().shutdown();
            assertThat(p.second().recv(arena.allocate(16), 4).bytes()).isZero();
        }
    }

    @Test
    void nonBlockingRecvWithNothingReadyIsMinusOne() {
        try (UnixSocket.Pair p = UnixSocket.pair()) {
            p.second().setNonBlocking(true);
            assertThat(p.second().recv(arena.allocate(16), 4).bytes()).isEqualTo(-1);
        }
    }

    @Test
    void tooManyDescriptorsAreClosedAndRefused() throws Exception {
        try (UnixSocket.Pair p = UnixSocket.pair(); EventFd a = EventFd.create(); EventFd b = EventFd.create();
                EventFd c = EventFd.create()) {
            long before = openFds();
            p.first().send(bytes("x"), a.fd(), b.fd(), c.fd());
            assertThatThrownBy(() -> p.second().recv(arena.allocate(16), 1))
                    .isInstanceOfSatisfying(ErrnoException.class,
                            e -> assertThat(e.errno()).isEqualTo(ErrnoException.EMSGSIZE));
            assertThat(openFds()).isEqualTo(before); // nothing leaked from the truncated message
        }
    }

    /**
     * Descriptors the kernel cannot install on receipt (this process at its limit: scm_detach_fds stops at the first
     * that fails and sets MSG_CTRUNC) are reported as dropped, with the bytes they came with; the ones that did arrive
     * are closed. Before, this was the EMSGSIZE of a peer that sent too many. The soft RLIMIT_NOFILE is lowered for
     * the two reads only: first to leave room for exactly one of the message's two descriptors, then for none.
     */
    @Test
    void descriptorsTheKernelCannotInstallAreReportedAsDroppedAndNoneIsLeft() throws Throwable {
        try (UnixSocket.Pair p = UnixSocket.pair(); EventFd a = EventFd.create(); EventFd b = EventFd.create()) {
            p.first().send(bytes("1"), a.fd(), b.fd());
            p.first().send(bytes("2"), a.fd(), b.fd());
            int free;
            try (Fd probe = p.second().dup()) {
                free = probe.fd(); // the lowest free number: the only one below a limit of free + 1
            }
            MemorySegment buf = arena.allocate(1);
            long[] limit = noFileLimit();
            UnixSocket.Received one;
            UnixSocket.Received none;
            try {
                setNoFileLimit(free + 1, limit[1]);
                one = p.second().recv(buf, 8); // the first descriptor installed at `free`, the second dropped
                setNoFileLimit(free, limit[1]);
                none = p.second().recv(buf, 8);
            } finally {
                setNoFileLimit(limit[0], limit[1]);
            }
            for (UnixSocket.Received r : new UnixSocket.Received[] {one, none}) {
                assertThat(r.bytes()).isEqualTo(1);
                assertThat(r.fds()).isEmpty();
                assertThat(r.fdsDropped()).isTrue();
            }
            assertThat(buf.get(ValueLayout.JAVA_BYTE, 0)).isEqualTo((byte) '2');
            try (Fd probe = p.second().dup()) {
                assertThat(probe.fd()).as("the descriptor that arrived was closed").isEqualTo(free);
            }
        }
    }

    private static final int RLIMIT_NOFILE = 7;

    /** {soft, hard} RLIMIT_NOFILE of this process (getrlimit(2)). */
    private static long[] noFileLimit() throws Throwable {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment rl = a.allocate(16, 8);
            Native.check((int) Native.downcall("getrlimit", java.lang.foreign.FunctionDescriptor.of(Native.C_INT,
                    Native.C_POINTER, Native.C_INT, Native.C_POINTER)).invokeExact(Native.errnoState(), RLIMIT_NOFILE,
                    rl), "getrlimit");
            return new long[] {rl.get(ValueLayout.JAVA_LONG, 0), rl.get(ValueLayout.JAVA_LONG, 8)};
        }
    }

    private static void setNoFileLimit(long soft, long hard) throws Throwable {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment rl = a.allocate(16, 8);
            rl.set(ValueLayout.JAVA_LONG, 0, soft);
            rl.set(ValueLayout.JAVA_LONG, 8, hard);
            Native.check((int) Native.downcall("setrlimit", java.lang.foreign.FunctionDescriptor.of(Native.C_INT,
                    Native.C_POINTER, Native.C_INT, Native.C_POINTER)).invokeExact(Native.errnoState(), RLIMIT_NOFILE,
                    rl), "setrlimit");
        }
    }

    private static long openFds() throws Exception {
        try (var s = Files.list(Path.of("/proc/self/fd"))) {
            return s.count();
        }
    }

    @Test
    void peerCredentialsAreOurs() throws Exception {
        try (UnixSocket server = UnixSocket.listen(path, 1); UnixSocket client = UnixSocket.connect(path);
                UnixSocket conn = server.accept()) {
            UnixSocket.Credentials c = conn.peerCredentials();
            assertThat(c.pid()).isEqualTo(ProcessHandle.current().pid());
            assertThat(c.uid()).isEqualTo((int) Files.getAttribute(Path.of("/proc/self"), "unix:uid"));
            assertThat(c.gid()).isEqualTo((int) Files.getAttribute(Path.of("/proc/self"), "unix:gid"));
            assertThat(client.peerCredentials()).isEqualTo(c);
        }
    }

    /**
     * With a mode, the socket file has it (less the umask) from bind on, before any chmod: what a connect can find
     * in the window before serve restricts it. Without, the umask's (0777 less it).
     */
    @Test
    void aModeGivenToListenIsTheFilesFromTheBindOn() throws Exception {
        try (UnixSocket l = UnixSocket.listen(path, 1, 0600)) {
            assertThat(Files.getPosixFilePermissions(path))
                    .isEqualTo(java.nio.file.attribute.PosixFilePermissions.fromString("rw-------"));
        }
        Files.delete(path);
        try (UnixSocket l = UnixSocket.listen(path, 1)) {
            assertThat(Files.getPosixFilePermissions(path)).contains(java.nio.file.attribute.PosixFilePermission.OWNER_READ,
                    java.nio.file.attribute.PosixFilePermission.OWNER_WRITE, java.nio.file.attribute.PosixFilePermission.OWNER_EXECUTE);
        }
    }

    @Test
    void listenNeverRemovesAnExistingFile() throws Exception {
        Files.writeString(path, "not a socket");
        assertThatThrownBy(() -> UnixSocket.listen(path, 1))
                .isInstanceOfSatisfying(ErrnoException.class, e -> {
                    assertThat(e.call()).isEqualTo("bind");
                    assertThat(e.errno()).isEqualTo(ErrnoException.EADDRINUSE);
                });
        assertThat(Files.readString(path)).isEqualTo("not a socket");
    }

    @Test
    void connectWithoutServerIsRefusedOrMissing() {
        assertThatThrownBy(() -> UnixSocket.connect(path))
                .isInstanceOfSatisfying(ErrnoException.class,
                        e -> assertThat(e.errno()).isEqualTo(ErrnoException.ENOENT));
    }

    @Test
    void rejectsPathsLongerThanSunPath() {
        Path longPath = Path.of("/tmp/" + "x".repeat(103)); // 108 bytes: no room for the NUL
        assertThatThrownBy(() -> UnixSocket.listen(longPath, 1))
                .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("1..107 bytes");
        Path fits = dir.resolve("y".repeat(107 - dir.toString().length() - 1));
        assertThat(fits.toString()).hasSize(107);
        try (UnixSocket s = UnixSocket.listen(fits, 1)) {
            assertThat(s.isOpen()).isTrue();
            assertThat(Files.exists(fits)).isTrue();
        } finally {
            try {
                Files.deleteIfExists(fits);
            } catch (Exception ignored) {
                // cleanup only
            }
        }
    }

    @Test
    void nonBlockingAcceptWithNothingPendingIsNull() {
        try (UnixSocket server = UnixSocket.listen(path, 1)) {
            server.setNonBlocking(true);
            assertThat(server.accept()).isNull();
        }
    }
}
