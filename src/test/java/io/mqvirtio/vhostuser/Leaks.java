package io.mqvirtio.vhostuser;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;

/**
 * What this process holds of the kind a vhost-user session can leak: open descriptors ({@code /proc/self/fd}) and
 * mappings of memfds ({@code /proc/self/maps} lines naming {@code memfd:}), with the descriptors listed by what they
 * point to, so a failure says what leaked.
 */
public record Leaks(int fds, int memfdMaps, List<String> fdTargets, List<String> memfdLines) {
    public static Leaks now() {
        List<String> targets;
        try (Stream<Path> s = Files.list(Path.of("/proc/self/fd"))) {
            targets = s.map(p -> {
                try {
                    return p.getFileName() + " -> " + Files.readSymbolicLink(p);
                } catch (IOException e) {
                    return p.getFileName() + " -> (gone)"; // the directory stream's own fd, closed by now
                }
            }).filter(t -> !t.endsWith("(gone)")).sorted().toList();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        List<String> maps;
        try {
            maps = Files.readAllLines(Path.of("/proc/self/maps")).stream().filter(l -> l.contains("memfd:")).toList();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return new Leaks(targets.size(), maps.size(), targets, maps);
    }

    /** Waits (up to {@code timeoutMs}) for the counts to come back to {@code baseline}; returns the last reading. */
    public static Leaks settleTo(Leaks baseline, long timeoutMs) throws InterruptedException {
        long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
        Leaks now = now();
        while ((now.fds != baseline.fds || now.memfdMaps != baseline.memfdMaps) && System.nanoTime() < deadline) {
            Thread.sleep(20);
            now = now();
        }
        return now;
    }

    /** Mappings in this process of the memfd called {@code name}. */
    static long mappingsOf(String name) {
        try {
            return Files.readAllLines(Path.of("/proc/self/maps")).stream().filter(l -> l.contains("/memfd:" + name + " ")).count();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public String describe() {
        return fds + " fds " + fdTargets + "\n" + memfdMaps + " memfd mappings " + memfdLines;
    }
}
