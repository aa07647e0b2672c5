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

    private function verify(string $token, int $now = self::NOW, string $act = 'login'): array
    {
        return (new Assertion(self::SECRET, self::AUD))->verify($token, $now, $this->remember(), $act);
    }

    private function refused(string $token, string $reason, int $now = self::NOW, string $act = 'login'): void
    {
        try {
            $this->verify($token, $now, $act);
            $this->fail("accepted, expected: $reason");
        } catch (AssertionException $e) {
            $this->assertStringContainsString($reason, $e->getMessage());
        }
    }

    /** The refusal of a static claim check (acc, email, owner, prune): its message, signed. */
    private static function claimRefusal(callable $check, array $claims): string
    {
        try {
            $check($claims);
        } catch (AssertionException $e) {
            self::assertTrue($e->signed);
            return $e->getMessage();
        }
        self::fail('accepted: ' . json_encode($claims));
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
        foreach (["alice\nadmin", "alice\n", 'alice admin', 'a<script>', str_repeat('a', 101), "alice\0"] as $i => $sub) {
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

    public function testNoActIsALoginToken(): void
    {
        $c = $this->verify(self::token(self::claims()));
        $this->assertArrayNotHasKey('act', $c['claims']);
        $c = $this->verify(self::token(self::claims(['act' => 'login', 'jti' => 'jti-act-login-0123456789'])), self::NOW, 'login');
        $this->assertSame('alice', $c['sub']);
    }

    public function testActMustBeTheActionAskedFor(): void
    {
        // A login token (no act, or act "login") at provision or access, and the other way round.
        $this->refused(
            self::token(self::claims()),
            'wrong action: the assertion is for login, not provision',
            self::NOW,
            'provision'
        );
        $this->refused(
            self::token(self::claims(['act' => 'login', 'jti' => 'jti-act-1-0123456789'])),
            'wrong action: the assertion is for login, not access',
            self::NOW,
            'access'
        );
        $this->refused(
            self::token(self::claims(['act' => 'provision', 'jti' => 'jti-act-2-0123456789'])),
            'wrong action: the assertion is for provision, not login'
        );
        $this->refused(
            self::token(self::claims(['act' => 'access', 'jti' => 'jti-act-3-0123456789'])),
            'wrong action: the assertion is for access, not provision',
            self::NOW,
            'provision'
        );
        foreach ([['x'], 7, '', 'Login', "login\n"] as $i => $act) {
            $this->refused(self::token(self::claims(['act' => $act, 'jti' => "jti-act-odd-$i-0123456789"])), 'malformed claim act');
        }
        // Refused after the signature (the caller holds the secret) and before the jti is spent.
        $t = self::token(self::claims(['act' => 'provision', 'jti' => 'jti-act-4-0123456789']));
        try {
            $this->verify($t);
            $this->fail('accepted');
        } catch (AssertionException $e) {
            $this->assertTrue($e->signed);
        }
        $this->assertSame('alice', $this->verify($t, self::NOW, 'provision')['sub']);
        $this->refused($t, 'replayed', self::NOW, 'provision');
    }

    public function testSuperuserAct(): void
    {
        $t = self::token(self::claims(['act' => 'superuser', 'sub' => 'admin', 'rd' => '/', 'jti' => 'jti-su-0-0123456789']));
        $c = $this->verify($t, self::NOW, 'superuser');
        $this->assertSame('admin', $c['sub']);
        $this->assertSame('/', $c['rd']);
        $this->refused($t, 'replayed assertion', self::NOW, 'superuser');
        // A login token (no act, or act "login") is refused at superuser, and the other way round.
        $this->refused(
            self::token(self::claims(['jti' => 'jti-su-1-0123456789'])),
            'wrong action: the assertion is for login, not superuser',
            self::NOW,
            'superuser'
        );
        $this->refused(
            self::token(self::claims(['act' => 'login', 'jti' => 'jti-su-2-0123456789'])),
            'wrong action: the assertion is for login, not superuser',
            self::NOW,
            'superuser'
        );
        $this->refused(
            self::token(self::claims(['act' => 'access', 'jti' => 'jti-su-3-0123456789'])),
            'wrong action: the assertion is for access, not superuser',
            self::NOW,
            'superuser'
        );
        $this->refused(
            self::token(self::claims(['act' => 'superuser', 'jti' => 'jti-su-4-0123456789'])),
            'wrong action: the assertion is for superuser, not login'
        );
        // An unknown login is the controller's answer, not a refusal here.
        $c = $this->verify(self::token(self::claims(['act' => 'superuser', 'sub' => 'nosuch', 'jti' => 'jti-su-5-0123456789'])), self::NOW, 'superuser');
        $this->assertSame('nosuch', $c['sub']);
    }

    /** Every action of Controller::ACTIONS is a public method of the controller. */
    public function testEveryActionIsAMethod(): void
    {
        $php = file_get_contents(__DIR__ . '/../Controller.php');
        $this->assertSame(1, preg_match('/public const ACTIONS = \[([^\]]*)\];/', $php, $m));
        preg_match_all("/'([a-z]+)'/", $m[1], $names);
        $this->assertSame(['login', 'whoami', 'provision', 'access', 'superuser'], $names[1]);
        foreach (array_merge($names[1], ['admin']) as $action) {
            $this->assertMatchesRegularExpression("/\n    public function $action\(\)\n/", $php, $action);
        }
        // The page is for superusers only, asked before anything is rendered.
        $this->assertMatchesRegularExpression(
            '/public function admin\(\)\n    \{\n        Piwik::checkUserHasSuperUserAccess\(\);/',
            $php
        );
    }

    /** The admin menu entry and page: superusers only, escaped, texts in both languages. */
    public function testAdminMenuAndTemplate(): void
    {
        $menu = file_get_contents(__DIR__ . '/../Menu.php');
        $this->assertStringContainsString('if (Piwik::hasUserSuperUserAccess()) {', $menu);
        $this->assertStringContainsString("addSystemItem('UnikGate_AdminMenu', \$this->urlForAction('admin')", $menu);
        $twig = file_get_contents(__DIR__ . '/../templates/admin.twig');
        $this->assertStringContainsString("{% extends 'admin.twig' %}", $twig);
        $this->assertStringContainsString(
            '<div id="unikgate-admin" data-prefix="{{ prefix }}" data-login="{{ login }}"></div>' . "\n"
            . '    </div>' . "\n" . '</div>' . "\n" . '<script src="{{ prefix }}/static/admin.js" defer></script>',
            $twig
        );
        // Nothing printed unescaped, and no autoescape turned off.
        $this->assertStringNotContainsString('raw', $twig);
        $this->assertStringNotContainsString('{% autoescape', $twig);
        preg_match_all("/'UnikGate_([A-Za-z]+)'/", $twig . $menu, $keys);
        $this->assertSame(['AdminTitle', 'AdminTitle', 'AdminIntro', 'AdminMenu'], $keys[1]);
        foreach (['en', 'fr'] as $lang) {
            $texts = json_decode(file_get_contents(__DIR__ . "/../lang/$lang.json"), true)['UnikGate'];
            foreach ($keys[1] as $k) {
                $this->assertNotEmpty($texts[$k] ?? null, "$lang: $k");
            }
            $this->assertSame('Unikname', $texts['AdminMenu']);
        }
    }

    public function testClaimsAreReturned(): void
    {
        $acc = ['1' => 'view', '12' => 'admin'];
        $owner = str_repeat('ab', 32);
        $c = $this->verify(self::token(self::claims([
            'act' => 'provision', 'sub' => 'carol', 'email' => 'carol@example.org', 'acc' => $acc,
            'owner' => $owner, 'rd' => '/',
        ])), self::NOW, 'provision');
        $this->assertSame('carol', $c['sub']);
        $this->assertSame('/', $c['rd']);
        $this->assertSame('provision', $c['claims']['act']);
        $this->assertSame('carol@example.org', Assertion::email($c['claims']));
        $this->assertSame($owner, Assertion::owner($c['claims']));
        $this->assertSame([1 => 'view', 12 => 'admin'], Assertion::access($c['claims']));
        $this->assertSame(self::NOW + 30, $c['claims']['exp']);
    }

    public function testAccess(): void
    {
        // JSON objects as json_decode(…, true) gives them: numeric keys become integers.
        $acc = static function (string $json): array {
            return Assertion::access(['acc' => json_decode($json, true)]);
        };
        $this->assertSame([], $acc('{}'));
        $this->assertSame([2 => 'write', 10 => 'view'], $acc('{"10":"view","2":"write"}'));
        $check = [Assertion::class, 'access'];
        $this->assertSame(
            'acc: site 1 cannot be given "superuser" (only view, write or admin)',
            self::claimRefusal($check, ['acc' => ['1' => 'superuser']])
        );
        foreach (['noaccess', 'View', '', null, 1, ['view']] as $level) {
            $this->assertStringStartsWith('acc: site 1 cannot be given', self::claimRefusal($check, ['acc' => ['1' => $level]]));
        }
        foreach (['abc', '0', '01', '-1', '1.5', ' 1', '12345678901'] as $id) {
            $this->assertSame(
                'acc: ' . json_encode($id) . ' is not a site id',
                self::claimRefusal($check, ['acc' => json_decode(json_encode([$id => 'view'], JSON_FORCE_OBJECT), true)])
            );
        }
        foreach ([[], ['acc' => 'view'], ['acc' => null], ['acc' => 1]] as $claims) {
            $this->assertStringStartsWith('acc missing or not an object', self::claimRefusal($check, $claims));
        }
    }

    public function testProvisionAndAccessClaims(): void
    {
        $this->assertSame('missing claim email', self::claimRefusal([Assertion::class, 'email'], []));
        $this->assertSame('missing claim email', self::claimRefusal([Assertion::class, 'email'], ['email' => '']));
        $this->assertSame('missing claim email', self::claimRefusal([Assertion::class, 'email'], ['email' => ['a@b.c']]));
        $this->assertSame('missing claim email', self::claimRefusal([Assertion::class, 'email'], ['email' => "a@b.c\nBcc: x"]));
        foreach ([null, '', str_repeat('A', 64), str_repeat('a', 63), str_repeat('g', 64), 64] as $owner) {
            $this->assertSame(
                'owner is not 64 lowercase hex characters',
                self::claimRefusal([Assertion::class, 'owner'], ['owner' => $owner])
            );
        }
        $this->assertTrue(Assertion::prune(['prune' => true]));
        $this->assertFalse(Assertion::prune(['prune' => false]));
        foreach ([null, 1, 'true', 0] as $prune) {
            $this->assertSame('prune is not a boolean', self::claimRefusal([Assertion::class, 'prune'], ['prune' => $prune]));
        }
    }

    /** php -l on every PHP file of the plugin (the Matomo-bound ones are not loaded here). */
    public function testEveryFileParses(): void
    {
        $files = array_merge(glob(__DIR__ . '/../*.php'), glob(__DIR__ . '/*.php'));
        $this->assertGreaterThanOrEqual(6, count($files));
        foreach ($files as $f) {
            exec('php -l ' . escapeshellarg($f) . ' 2>&1', $out, $rc);
            $this->assertSame(0, $rc, "$f: " . implode("\n", $out));
        }
    }
}
