<?php
// PHPUnit (Debian's phpunit package): phpunit matomo-plugin/UnikGate/tests

require_once __DIR__ . '/../Assertion.php';

use PHPUnit\Framework\TestCase;
use Piwik\Plugins\UnikGate\Assertion;
use Piwik\Plugins\UnikGate\AssertionException;

final class AssertionTest extends TestCase
{
    private const SECRET = 'a-shared-secret-of-at-least-32-bytes!!';
    private const AUD = 'https://analytics.example.com/';
    private const NOW = 1800000000;

    /** @var array<string,int> */
    private $seen = [];

    private function remember(): callable
    {
        return function (string $jti, int $until): bool {
            if (isset($this->seen[$jti])) {
                return false;
            }
            $this->seen[$jti] = $until;
            return true;
        };
    }

    private static function token(array $claims, array $header = ['alg' => 'HS256', 'typ' => 'JWT'], string $secret = self::SECRET): string
    {
        $h = Assertion::b64encode(json_encode($header));
        $p = Assertion::b64encode(json_encode($claims));
        $s = Assertion::b64encode(hash_hmac('sha256', "$h.$p", $secret, true));
        return "$h.$p.$s";
    }

    private static function claims(array $over = []): array
    {
        return array_merge([
            'iss' => 'unikgate', 'aud' => self::AUD, 'sub' => 'alice',
            'iat' => self::NOW, 'exp' => self::NOW + 30,
            'jti' => 'jti-0123456789abcdef', 'rd' => '/index.php?module=CoreHome',
        ], $over);
    }

    private function verify(string $token, int $now = self::NOW): array
    {
        return (new Assertion(self::SECRET, self::AUD))->verify($token, $now, $this->remember());
    }

    private function refused(string $token, string $reason, int $now = self::NOW): void
    {
        try {
            $this->verify($token, $now);
            $this->fail("accepted, expected: $reason");
        } catch (AssertionException $e) {
            $this->assertStringContainsString($reason, $e->getMessage());
        }
    }

    public function testValid(): void
    {
        $c = $this->verify(self::token(self::claims()));
        $this->assertSame('alice', $c['sub']);
        $this->assertSame('/index.php?module=CoreHome', $c['rd']);
    }

    public function testAudienceWithoutTrailingSlashIsTheSame(): void
    {
        $c = $this->verify(self::token(self::claims(['aud' => 'https://analytics.example.com'])));
        $this->assertSame('alice', $c['sub']);
    }

    public function testExpired(): void
    {
        $this->refused(self::token(self::claims(['iat' => self::NOW - 120, 'exp' => self::NOW - 90])), 'expired');
    }

    public function testSkewIsAllowed(): void
    {
        $this->verify(self::token(self::claims(['iat' => self::NOW - 40, 'exp' => self::NOW - 10])));
        $this->verify(self::token(self::claims(['iat' => self::NOW + 20, 'exp' => self::NOW + 50, 'jti' => 'jti-other-0123456789'])));
        $this->addToAssertionCount(1);
    }

    public function testNotYetValid(): void
    {
        $this->refused(self::token(self::claims(['iat' => self::NOW + 120, 'exp' => self::NOW + 150])), 'not yet valid');
    }

    public function testTooLongLived(): void
    {
        $this->refused(self::token(self::claims(['exp' => self::NOW + 3600])), 'lifetime');
    }

    public function testWrongAudience(): void
    {
        $this->refused(
            self::token(self::claims(['aud' => 'https://evil.example'])),
            'wrong audience: the assertion is for https://evil.example/, this Matomo is ' . self::AUD
        );
    }

    /** Only a refusal after a good signature says the caller holds the secret (it may read facts). */
    public function testSignedMarksOnlyRefusalsAfterTheSignature(): void
    {
        $signed = function (string $token): bool {
            try {
                $this->verify($token);
            } catch (AssertionException $e) {
                return $e->signed;
            }
            $this->fail('accepted');
        };
        $this->assertTrue($signed(self::token(self::claims(['aud' => 'https://evil.example/']))));
        $this->assertTrue($signed(self::token(self::claims(['exp' => self::NOW - 100, 'iat' => self::NOW - 120]))));
        $this->assertFalse($signed(self::token(self::claims(), ['alg' => 'HS256', 'typ' => 'JWT'], 'another-secret-of-at-least-32-bytes!!!')));
        $this->assertFalse($signed('a.b.c'));
    }

    public function testWrongIssuer(): void
    {
        $this->refused(self::token(self::claims(['iss' => 'someone'])), 'wrong issuer');
    }

    public function testReplayedJti(): void
    {
        $t = self::token(self::claims());
        $this->verify($t);
        $this->refused($t, 'replayed');
    }

    public function testBadSignature(): void
    {
        $this->refused(self::token(self::claims(), ['alg' => 'HS256', 'typ' => 'JWT'], 'another-secret-of-at-least-32-bytes!!!'), 'bad signature');
    }

    public function testAlgNone(): void
    {
        $h = Assertion::b64encode(json_encode(['alg' => 'none', 'typ' => 'JWT']));
        $p = Assertion::b64encode(json_encode(self::claims()));
        $this->refused("$h.$p.", 'unsupported header');
        $this->refused("$h.$p.x", 'unsupported header');
    }

    public function testRs256Header(): void
    {
        $this->refused(self::token(self::claims(), ['alg' => 'RS256', 'typ' => 'JWT']), 'unsupported header');
        $this->refused(self::token(self::claims(), ['alg' => 'HS256', 'typ' => 'JWT', 'kid' => 'x']), 'unsupported header');
    }

    public function testTruncated(): void
    {
        $t = self::token(self::claims());
        $this->refused(substr($t, 0, strrpos($t, '.')), 'malformed');
        $this->refused(substr($t, 0, -5), 'bad signature');
        $this->refused('', 'malformed');
    }

    public function testOddSubjects(): void
    {
        foreach (["alice\nadmin", 'alice admin', 'a<script>', str_repeat('a', 101), "alice\0"] as $i => $sub) {
            $this->refused(self::token(self::claims(['sub' => $sub, 'jti' => "jti-odd-$i-0123456789"])), 'not a Matomo login');
        }
        $c = $this->verify(self::token(self::claims(['sub' => 'jane.doe-x@example.com', 'jti' => 'jti-jane-0123456789'])));
        $this->assertSame('jane.doe-x@example.com', $c['sub']);
        $c = $this->verify(self::token(self::claims(['sub' => 'Jürgen', 'jti' => 'jti-jurgen-0123456789'])));
        $this->assertSame('Jürgen', $c['sub']);
    }

    public function testRdMustBeRelative(): void
    {
        foreach (['//evil.example', 'https://evil.example', '/\\evil', "/\tx", 'x'] as $i => $rd) {
            $this->refused(self::token(self::claims(['rd' => $rd, 'jti' => "jti-rd-$i-0123456789"])), 'rd');
        }
    }

    public function testShortSecretRefused(): void
    {
        $this->expectException(AssertionException::class);
        new Assertion('short', self::AUD);
    }

    public function testClaimTypes(): void
    {
        $this->refused(self::token(self::claims(['exp' => (string) (self::NOW + 30)])), 'missing claim exp');
        $this->refused(self::token(self::claims(['sub' => ['alice']])), 'missing claim sub');
    }
}
