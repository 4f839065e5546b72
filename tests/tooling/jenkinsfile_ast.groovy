// Parse a Jenkinsfile with Groovy's own compiler and print its calls as JSON, for the tests.
//
//   groovy tests/tooling/jenkinsfile_ast.groovy ci-examples/jenkins/Jenkinsfile
//
// Jenkins compiles a Pipeline with Groovy 2.4 (Debian's groovy package is 2.4.21, the version
// Jenkins bundles): a syntax error stops the compilation here as it stops the build there. The
// file is compiled to bytecode (every phase but writing class files), then its statements are
// printed as a tree: a call is {"call": name, "args": [...], "named": {...}, "body": [...]},
// a closure's statements are its "body", a string literal is a JSON string (after Groovy has
// processed its escapes: exactly the text Jenkins would use), an interpolated string is
// {"gstring": source}, an `if` {"if": condition, "then": [...], "else": [...]}, a `return`
// {"return": value}, an assignment or declaration {"assign": target, "value": value}, anything else {"expr": kind, "text": source}. Top-level methods are listed
// under "methods". Exit code 1 and the compiler's message on a syntax error.
import groovy.json.JsonOutput
import org.codehaus.groovy.ast.expr.*
import org.codehaus.groovy.ast.stmt.*
import org.codehaus.groovy.control.CompilationUnit
import org.codehaus.groovy.control.MultipleCompilationErrorsException
import org.codehaus.groovy.control.Phases

def convert
convert = { node ->
    switch (node) {
        case BlockStatement:
            return node.statements.collect { convert(it) }
        case ExpressionStatement:
            return convert(node.expression)
        case ReturnStatement:
            return [return: convert(node.expression)]
        case IfStatement:
            return [if: convert(node.booleanExpression.expression), then: convert(node.ifBlock), else: convert(node.elseBlock)]
        case EmptyStatement:
            return []
        case MethodCallExpression:
            def out = [call: node.methodAsString, args: [], named: [:]]
            if (!node.isImplicitThis()) {
                out.receiver = convert(node.objectExpression)
            }
            def arguments = node.arguments instanceof TupleExpression ? node.arguments.expressions : [node.arguments]
            arguments.each { argument ->
                if (argument instanceof NamedArgumentListExpression) {
                    argument.mapEntryExpressions.each { entry -> out.named[entry.keyExpression.text] = convert(entry.valueExpression) }
                } else if (argument instanceof ClosureExpression) {
                    out.body = convert(argument.code)
                } else {
                    out.args << convert(argument)
                }
            }
            return out
        case ClosureExpression:
            return [closure: convert(node.code)]
        case BinaryExpression:
            if (node.operation.text == '=') {
                return [assign: node.leftExpression.text, value: convert(node.rightExpression)]
            }
            return [expr: 'BinaryExpression', text: node.text]
        case ConstantExpression:
            return node.value
        case GStringExpression:
            return [gstring: node.text]
        case ListExpression:
            return node.expressions.collect { convert(it) }
        case MapExpression:
            return node.mapEntryExpressions.collectEntries { [(it.keyExpression.text): convert(it.valueExpression)] }
        case Statement:
            return [statement: node.class.simpleName, text: node.text]
        default:
            return [expr: node.class.simpleName, text: node.text]
    }
}

def source = new File(args[0])
try {
    def compiled = new CompilationUnit()
    compiled.addSource(source)
    compiled.compile(Phases.CLASS_GENERATION)
} catch (MultipleCompilationErrorsException error) {
    System.err.println(error.message)
    System.exit(1)
}
// The tree as written (later phases add the script's implicit return and other generated code).
def unit = new CompilationUnit()
unit.addSource(source)
unit.compile(Phases.CONVERSION)
def module = unit.AST.modules[0]
def methods = module.methods.collectEntries { [(it.name): convert(it.code)] }
println JsonOutput.toJson([statements: convert(module.statementBlock), methods: methods])
