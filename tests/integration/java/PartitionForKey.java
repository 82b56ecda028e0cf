// What partition the Java producer picks for a key: the same static method its built-in
// partitioner calls (BuiltInPartitioner.partitionForKey: toPositive(murmur2(key)) % n).
//
// Run as a single-file source program with the stack's kafka-clients jar:
//   java -cp kafka-clients-<v>.jar PartitionForKey.java 1 7 13 64 < keys
// stdin: one key per line, as the hex of its serialized bytes (a Java producer with
// StringSerializer sends UTF-8); an empty line is the empty key.
// stdout: per key, its partition for each partition count on the command line.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;

public class PartitionForKey {
    public static void main(String[] args) throws Exception {
        int[] counts = new int[args.length];
        for (int i = 0; i < args.length; i++) {
            counts[i] = Integer.parseInt(args[i]);
        }
        BufferedReader in = new BufferedReader(
            new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        StringBuilder out = new StringBuilder();
        String line;
        while ((line = in.readLine()) != null) {
            byte[] key = HexFormat.of().parseHex(line);
            for (int i = 0; i < counts.length; i++) {
                if (i > 0) {
                    out.append(' ');
                }
                out.append(BuiltInPartitioner.partitionForKey(key, counts[i]));
            }
            out.append('\n');
        }
        System.out.print(out);
    }
}
