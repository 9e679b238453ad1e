package io.mqvirtio.cli;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.net.InetAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.spi.ToolProvider;

/**
 * The {@code mqvirtio} command as users run it: {@code java --enable-native-access=ALL-UNNAMED -jar mqvirtio.jar
 * ...} in a process of its own, on the JDK that runs the tests ({@code java.home}, 25+).
 *
 * <p>The jar is packed once per test JVM from the classes this build just compiled, with the manifest the pom gives
 * {@code target/mqvirtio.jar} (Main-Class, Enable-Native-Access). {@code target/mqvirtio.jar} itself is not used:
 * under {@code mvn verify} it is packaged only after the tests, so it may be missing or stale, and a concurrent
 * build may rewrite it while a test runs. The runtime libraries go beside it in {@code lib/}, named in its Class-Path
 * as {@code target/lib} is in the real one's.
 */
public final class Launcher {
    private static Path jar;

    private Launcher() {}

    /** The jar (built on first use). */
    public static synchronized Path jar() throws IOException {
        if (jar != null) {
            return jar;
        }
        Path classes;
        try {
            classes = Path.of(Main.class.getProtectionDomain().getCodeSource().getLocation().toURI());
        } catch (java.net.URISyntaxException e) {
            throw new IOException(e);
        }
        Path dir = Files.createTempDirectory("mqvirtio-launcher");
        dir.toFile().deleteOnExit(); // registered first: deleted last, once empty
        Path lib = Files.createDirectory(dir.resolve("lib"));
        lib.toFile().deleteOnExit();
        List<String> classPath = new ArrayList<>();
        // the pom's runtime dependencies, as the build listed them before the tests (dependency:build-classpath)
        Path listed = classes.resolveSibling("runtime-classpath.txt");
        for (String entry : Files.readString(listed).trim().split(java.io.File.pathSeparator)) {
            if (entry.isBlank()) {
                continue;
            }
            Path from = Path.of(entry);
            Path to = lib.resolve(from.getFileName());
            Files.copy(from, to);
            to.toFile().deleteOnExit();
            classPath.add("lib/" + from.getFileName());
        }
        Path manifest = dir.resolve("MANIFEST.MF");
        java.util.jar.Manifest mf = new java.util.jar.Manifest();
        java.util.jar.Attributes main = mf.getMainAttributes();
        main.put(java.util.jar.Attributes.Name.MANIFEST_VERSION, "1.0");
        main.put(java.util.jar.Attributes.Name.MAIN_CLASS, "io.mqvirtio.cli.Main");
        main.putValue("Enable-Native-Access", "ALL-UNNAMED");
        main.put(java.util.jar.Attributes.Name.CLASS_PATH, String.join(" ", classPath));
        try (OutputStream mo = Files.newOutputStream(manifest)) {
            mf.write(mo); // wraps lines at 72 bytes, as the format wants
        }
        Path out = dir.resolve("mqvirtio.jar");
        ToolProvider tool = ToolProvider.findFirst("jar").orElseThrow(() -> new IOException("no jar tool in this JDK"));
        var log = new java.io.ByteArrayOutputStream();
        PrintStream ps = new PrintStream(log, true, StandardCharsets.UTF_8);
        int rc = tool.run(ps, ps, "--create", "--file", out.toString(), "--manifest", manifest.toString(), "-C",
                classes.toString(), ".");
        if (rc != 0) {
            throw new IOException("jar failed (" + rc + "): " + log);
        }
        manifest.toFile().deleteOnExit();
        out.toFile().deleteOnExit();
        jar = out;
        return jar;
    }

    /** {@code java --enable-native-access=ALL-UNNAMED --illegal-native-access=deny -jar JAR args...}. */
    public static List<String> command(String... args) throws IOException {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.add("--enable-native-access=ALL-UNNAMED");
        cmd.add("--illegal-native-access=deny");
        cmd.add("-jar");
        cmd.add(jar().toString());
        cmd.addAll(List.of(args));
        return cmd;
    }

    /** A started process whose stdout and stderr go to files in {@code dir}. */
    public record Run(Process process, Path out, Path err) implements AutoCloseable {
        public String stdout() throws IOException {
            return Files.readString(out);
        }

        public String stderr() throws IOException {
            return Files.readString(err);
        }

        /** Waits until stderr matches {@code regex} (group 1 returned, or the whole match); fails if the process ends. */
        public String awaitErr(String regex, long timeoutMillis) throws IOException, InterruptedException {
            Pattern p = Pattern.compile(regex);
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMillis);
            while (true) {
                Matcher m = p.matcher(stderr());
                if (m.find()) {
                    return m.groupCount() > 0 ? m.group(1) : m.group();
                }
                if (!process.isAlive()) {
                    throw new AssertionError("process exited " + process.exitValue() + " before /" + regex + "/:\n"
                            + stderr() + stdout());
                }
                if (System.nanoTime() > deadline) {
                    throw new AssertionError("no /" + regex + "/ in " + timeoutMillis + " ms:\n" + stderr());
                }
                Thread.sleep(50);
            }
        }

        /** Waits for the exit status; kills and fails after the timeout. */
        public int exit(long timeoutMillis) throws IOException, InterruptedException {
            if (!process.waitFor(timeoutMillis, TimeUnit.MILLISECONDS)) {
                close();
                throw new AssertionError("did not exit within " + timeoutMillis + " ms:\n" + stderr());
            }
            return process.exitValue();
        }

        /** SIGTERM, then SIGKILL after 5 s if still alive. */
        @Override
        public void close() {
            if (process.isAlive()) {
                process.destroy();
                try {
                    if (!process.waitFor(5, TimeUnit.SECONDS)) {
                        process.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
                    }
                } catch (InterruptedException e) {
                    process.destroyForcibly();
                    Thread.currentThread().interrupt();
                }
            }
        }
    }

    /** Starts {@code command} (from {@link #command}, perhaps behind {@code ip netns exec NS}). */
    public static Run start(Path dir, String tag, List<String> command) throws IOException {
        Path out = dir.resolve(tag + ".out");
        Path err = dir.resolve(tag + ".err");
        Process p = new ProcessBuilder(command).redirectOutput(out.toFile()).redirectError(err.toFile())
                .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null"))).start();
        return new Run(p, out, err);
    }

    /** Runs {@code mqvirtio args...} to completion (at most {@code timeoutMillis}). */
    public static Run runToEnd(Path dir, String tag, long timeoutMillis, String... args)
            throws IOException, InterruptedException {
        Run r = start(dir, tag, command(args));
        r.exit(timeoutMillis);
        return r;
    }

    /** What an HTTP GET returned. */
    public record Http(int status, String contentType, String body) {}

    /**
     * A plain HTTP/1.1 GET on a socket created by the calling thread (so, called on a thread that entered a network
     * namespace, it reaches that namespace's loopback).
     */
    public static Http get(String host, int port, String path) throws IOException {
        return get(host, port, path, "");
    }

    /** The same, with more header fields ({@code "Accept: ...\r\n"}). */
    public static Http get(String host, int port, String path, String fields) throws IOException {
        try (Socket s = new Socket(InetAddress.getByName(host), port)) {
            s.setSoTimeout(5000);
            OutputStream o = s.getOutputStream();
            o.write(("GET " + path + " HTTP/1.1\r\nHost: " + (host.contains(":") ? "[" + host + "]" : host) + "\r\n" + fields
                    + "Connection: close\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
            o.flush();
            InputStream in = s.getInputStream();
            String all = new String(in.readAllBytes(), StandardCharsets.UTF_8);
            int end = all.indexOf("\r\n\r\n");
            if (end < 0) {
                throw new IOException("no HTTP header in: " + all);
            }
            String[] head = all.substring(0, end).split("\r\n");
            int status = Integer.parseInt(head[0].split(" ")[1]);
            String type = "";
            for (String h : head) {
                if (h.toLowerCase(java.util.Locale.ROOT).startsWith("content-type:")) {
                    type = h.substring(h.indexOf(':') + 1).trim();
                }
            }
            return new Http(status, type, all.substring(end + 4));
        }
    }
}
